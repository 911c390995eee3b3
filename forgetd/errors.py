"""Errors an operator can see. Each carries the field it is about and maps to an exit code.

Messages must never contain personal data (subject identities, payload texts): they are printed,
logged and may end up in tickets.
"""

from __future__ import annotations


class ForgetdError(Exception):
    """Base of every error forgetd reports to an operator without a traceback."""

    exit_code = 1
    retryable = False  # whether a job that raises it is tried again (errors.Unavailable)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InputError(ForgetdError):
    """The operator gave a malformed value: fix the named field and retry."""

    exit_code = 2


class NotFoundError(ForgetdError):
    """A referenced object (request, model, policy) does not exist."""


class DomainError(ForgetdError):
    """The input is well formed but the operation is not allowed now (illegal transition, four-eyes…)."""


class ConfigError(ForgetdError):
    """forgetd is misconfigured (missing master key, unreadable config file…)."""


class ResourceError(ForgetdError):
    """The machine refused a read or write (full disk, read-only file, no permission): the operator frees
    space or fixes access, and the same command then works. Exit 74, sysexits' EX_IOERR."""

    exit_code = 74


class Unavailable(ForgetdError):
    """Something a job needs is missing or unreadable now (a model file, a mount). Unlike other ForgetdErrors
    a job retries it with backoff (it may be back shortly); when the attempts run out its request fails with
    this message, which says what to restore."""

    retryable = True


class SchemaOutOfDate(ForgetdError):
    """The database schema is behind (or ahead of) this version of forgetd."""


class IntegrityFailure(ForgetdError):
    """Stored data failed an integrity check (audit chain, content hash)."""
