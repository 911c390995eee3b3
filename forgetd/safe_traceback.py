"""Tracebacks without the exception's message, for output that is kept (the service's log, job logs).

An exception's message may quote data: a database driver's statement parameters, a library's view of a
forget text. forgetd's own errors (ForgetdError) are written to be safe and keep theirs; for anything
else the frames say where it failed and the class what, and FORGETD_DEBUG=1 shows it all.
"""

from __future__ import annotations

import logging
import os
import traceback

WITHHELD = "(the message is withheld: it may quote data; FORGETD_DEBUG=1 shows it)"


def debugging() -> bool:
    return bool(os.environ.get("FORGETD_DEBUG"))


def describe(exc: BaseException) -> str:
    """The message of a ForgetdError, else the exception's class name."""
    from forgetd.errors import ForgetdError

    return str(exc) if isinstance(exc, ForgetdError) else type(exc).__name__


def withheld(exc: BaseException) -> str:
    """Where `exc` was raised, frame by frame, and what it is, without its message (the whole chain)."""
    lines = []
    for link in _chain(exc):
        lines.append("".join(traceback.format_list(traceback.extract_tb(link.__traceback__))))
        lines.append(f"{type(link).__module__}.{type(link).__qualname__}: {describe(link)}\n")
    return "".join(lines) + WITHHELD


def _chain(exc: BaseException) -> list[BaseException]:
    seen, chain = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.insert(0, exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return chain


class Formatter(logging.Formatter):
    """A log formatter whose tracebacks withhold exception messages (unless FORGETD_DEBUG=1)."""

    def formatException(self, ei) -> str:
        if debugging() or ei[1] is None:
            return super().formatException(ei)
        return withheld(ei[1])
