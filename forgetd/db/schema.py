"""Alembic, driven from code: upgrade, downgrade, current revision and the out-of-date check."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect

from forgetd.errors import ConfigError, SchemaOutOfDate


def _require_migrations(migrations_dir: Path) -> None:
    if not (migrations_dir / "env.py").is_file():
        raise ConfigError(f"migrations not found at {migrations_dir}", field="migrations_dir")


def alembic_config(migrations_dir: Path, engine: Engine | None = None):
    from alembic.config import Config

    _require_migrations(migrations_dir)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("path_separator", "os")
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def revisions(migrations_dir: Path) -> list[str]:
    """Every revision the migration scripts define, oldest name first (read without running them)."""
    _require_migrations(migrations_dir)
    scripts = sorted((migrations_dir / "versions").glob("*.py"))
    found = (_module_constants(path, ("revision",)).get("revision") for path in scripts)
    return [r for r in found if isinstance(r, str)]


def head_revision(migrations_dir: Path) -> str:
    """The one head of the migration scripts. Every command but `init` and `db …` checks the schema against
    it, so it is read from the scripts' `revision` and `down_revision` assignments: importing Alembic and
    running every script, as Alembic's ScriptDirectory does, took a fifth of a short command's 1.3 s."""
    _require_migrations(migrations_dir)
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((migrations_dir / "versions").glob("*.py")):
        found = _module_constants(path, ("revision", "down_revision"))
        if not isinstance(found.get("revision"), str):
            raise ConfigError(f"{path.name} assigns no revision string", field="migrations_dir")
        revisions.add(found["revision"])
        down = found.get("down_revision")
        parents.update(down if isinstance(down, (tuple, list)) else [down] if down else [])
    heads = sorted(revisions - parents)
    if len(heads) != 1:
        raise ConfigError(f"migrations have {len(heads)} heads; expected exactly one", field="migrations_dir")
    return heads[0]


def _module_constants(path: Path, names: tuple[str, ...]) -> dict:
    """Literal values a script assigns to `names` at module level (`x = …` or `x: T = …`), without running it."""
    import ast

    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                pass
    return found


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


class BadRevision(Exception):
    """The target revision resolves to no migration script, or to none reachable that way (Alembic's message,
    without its traceback)."""


def _run(engine: Engine, migrations_dir: Path, fn, revision: str) -> None:
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    cfg = alembic_config(migrations_dir)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        try:
            fn(cfg, revision)
        except (CommandError, RevisionError) as exc:
            # Alembic re-raises a RevisionError of the scripts as CommandError; other CommandErrors stay errors
            if isinstance(exc, RevisionError) or isinstance(exc.__cause__, RevisionError):
                raise BadRevision(str(exc)) from exc
            raise


def upgrade(engine: Engine, migrations_dir: Path, revision: str = "head") -> None:
    from alembic import command

    _run(engine, migrations_dir, command.upgrade, revision)


def downgrade(engine: Engine, migrations_dir: Path, revision: str) -> None:
    from alembic import command

    _run(engine, migrations_dir, command.downgrade, revision)


def check_drift(engine: Engine, migrations_dir: Path) -> None:
    """`alembic check`: raises if the models and the migrated schema differ."""
    from alembic import command

    import contextlib
    import io

    cfg = alembic_config(migrations_dir)
    with engine.connect() as conn, contextlib.redirect_stdout(io.StringIO()):
        cfg.attributes["connection"] = conn
        command.check(cfg)


def ensure_current(engine: Engine, migrations_dir: Path) -> None:
    current = current_revision(engine)
    head = head_revision(migrations_dir)
    if current is None:
        raise SchemaOutOfDate(f"database has no forgetd schema (this forgetd needs {head}): run `forgetd db upgrade`")
    if current != head:
        raise SchemaOutOfDate(f"database schema is at {current}, this forgetd needs {head}: run `forgetd db upgrade`")
