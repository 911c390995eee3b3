"""The `forgetd` entry point: the command tree and the one place errors become exit codes.

Exit codes: 0 ok, 1 domain error (illegal transition, unknown id…), 2 usage or input error,
70 internal error, 74 the machine refused a read or write (no space, no permission, read-only file
system). Operators never see a traceback unless FORGETD_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from forgetd import __version__
from forgetd.cli.audit import audit
from forgetd.cli.checkpoints import checkpoint
from forgetd.cli.db import db, init
from forgetd.cli.demo import demo
from forgetd.cli.explain import explain
from forgetd.cli.generate import generate
from forgetd.cli.jobs import job
from forgetd.cli.lineage import lineage
from forgetd.cli.models import model
from forgetd.cli.policies import policy
from forgetd.cli.requests import request
from forgetd.cli.serve import serve
from forgetd.cli.status import status
from forgetd.cli.sweep import sweep
from forgetd.cli.tick import tick

EX_SOFTWARE = 70
EX_IOERR = 74

# Errors the machine gives that an operator fixes (space, permissions), as opposed to a bug in forgetd.
_OPERATOR_OS_ERRORS = {
    errno.ENOSPC: "free some space, then run the command again",
    errno.EDQUOT: "free some space or raise the quota, then run the command again",
    errno.EACCES: "give the user running forgetd access to it, or choose another path",
    errno.EPERM: "give the user running forgetd access to it, or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EFBIG: "the file outgrew the file-size limit of the user running forgetd (ulimit -f); raise it, then run "
                 "the command again",
}


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: forgetd init && forgetd request list --overdue",
)
@click.option(
    "--operator",
    metavar="NAME",
    help="Who is acting (default: $FORGETD_OPERATOR, then the OS user). Recorded in the audit trail.",
)
@click.version_option(__version__, prog_name="forgetd")
def cli(operator: str | None) -> None:
    """forgetd: take erasure requests in, track their deadlines, and keep a tamper-evident trail.

    Configuration comes from FORGETD_HOME, FORGETD_DATABASE_URL, FORGETD_MASTER_KEY (or
    $FORGETD_HOME/master.key) and an optional forgetd.toml.
    """


for command in (init, db, model, request, tick, job, serve, status, checkpoint, lineage, policy, audit, sweep, demo,
                explain, generate):
    cli.add_command(command)


def _say_error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    from forgetd.errors import ForgetdError

    try:
        # Without standalone mode, click returns the code of an explicit `ctx.exit(n)` instead of exiting.
        rc = cli.main(args=argv, prog_name="forgetd", standalone_mode=False)
    except ForgetdError as exc:
        _say_error(" ".join(str(exc).split()) if "\n" not in exc.message else str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _say_error("aborted")
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:
        # A bare group (e.g. `forgetd` or `forgetd request`) shows its help, as a usage hint.
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # Usage errors: bad option, missing argument, wrong type. Click names the parameter.
        _say_error(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say_error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        if os.environ.get("FORGETD_DEBUG") or exc.errno not in _OPERATOR_OS_ERRORS:
            _internal_error(exc)
        _say_error(_os_error_message(exc))
        sys.exit(EX_IOERR)
    except Exception as exc:
        _internal_error(exc)
    sys.exit(rc if isinstance(rc, int) else 0)


def _internal_error(exc: BaseException) -> None:
    if os.environ.get("FORGETD_DEBUG"):
        raise exc
    if "sqlalchemy" in sys.modules:
        # A database error in the middle of a command: a full disk or a server gone away is the
        # operator's to fix, and says so; anything else is ours.
        from forgetd.db import driver_errors

        described = driver_errors.describe(exc)
        if described is not None:
            kind, message = described
            _say_error(f"FORGETD_DATABASE_URL: {message}")
            sys.exit(EX_IOERR if kind == driver_errors.DISK else 1)
    # Only the class name: exception texts (e.g. from the database driver) may quote personal data.
    _say_error(f"internal error ({type(exc).__name__}); rerun with FORGETD_DEBUG=1 for details")
    sys.exit(EX_SOFTWARE)


def _os_error_message(exc: OSError) -> str:
    """The machine refused a read or write: say which file and what to do, not "internal error". Only the
    OS's own wording and the path: file names under FORGETD_HOME are content hashes and ids, and other paths
    are the ones the operator named."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}; {_OPERATOR_OS_ERRORS[exc.errno]}"
