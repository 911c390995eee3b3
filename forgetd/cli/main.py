"""The `forgetd` entry point: the command tree and the one place errors become exit codes.

Exit codes: 0 ok, 1 domain error (illegal transition, unknown id…), 2 usage or input error,
70 internal error. Operators never see a traceback unless FORGETD_DEBUG=1.
"""

from __future__ import annotations

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
    except Exception as exc:
        if os.environ.get("FORGETD_DEBUG"):
            raise
        # Only the class name: exception texts (e.g. from the database driver) may quote personal data.
        _say_error(f"internal error ({type(exc).__name__}); rerun with FORGETD_DEBUG=1 for details")
        sys.exit(EX_SOFTWARE)
    sys.exit(rc if isinstance(rc, int) else 0)
