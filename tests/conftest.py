"""Shared fixtures: a migrated SQLite file or a fresh PostgreSQL database per test, settings, CLI env.

PostgreSQL: FORGETD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) names a
server; each run creates its own databases there and drops them afterwards. Without a reachable server
the postgres tests are skipped locally and fail under CI (CI=true).
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    return os.environ.get("FORGETD_TEST_POSTGRES_URL", DEFAULT_PG)


def _pg_connect(url: str):
    import psycopg

    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database, autocommit=True
    )


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    from forgetd.db.engine import normalise_url

    return normalise_url(make_url(url).set(database=name).render_as_string(hide_password=False))


class PostgresServer:
    """Creates databases for this test run and drops all of them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"forgetd_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.created: list[str] = []
        self._template: str | None = None
        self._counter = 0

    def create(self, *, template: str | None = None) -> str:
        self._counter += 1
        name = f"{self.prefix}_{self._counter}"
        with _pg_connect(self.admin_url) as conn:
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")
        self.created.append(name)
        return name

    def url(self, name: str) -> str:
        return _with_database(self.admin_url, name)

    def migrated(self) -> str:
        """A fresh database at head, copied from a template migrated once per run."""
        if self._template is None:
            from forgetd.db import schema
            from forgetd.db.engine import make_engine

            template = self.create()
            engine = make_engine(self.url(template))
            schema.upgrade(engine, MIGRATIONS)
            engine.dispose()
            self._template = template
        return self.url(self.create(template=self._template))

    def drop_all(self) -> None:
        with _pg_connect(self.admin_url) as conn:
            for name in reversed(self.created):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_server():
    try:
        with _pg_connect(_pg_admin_url()):
            pass
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI: {type(exc).__name__}: {exc}")
        pytest.skip(f"no PostgreSQL server at FORGETD_TEST_POSTGRES_URL ({type(exc).__name__})")
    server = PostgresServer(_pg_admin_url())
    yield server
    server.drop_all()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.migrated()


def run_shared_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (each worker's base temp is a folder in it; without
    xdist it is the run's base temp): models cached there under a file lock are built once per run."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shapes_test_home(tmp_path_factory) -> Path:
    """Where the text-to-image test model (ShapesConfig.for_tests) is cached: one home for every test module that
    uses it, so it is built once per run."""
    return run_shared_dir(tmp_path_factory) / "shapes-t2i-home"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """One SQLite file migrated to head per run; each test gets a copy (migrating costs ~50 ms)."""
    from forgetd.db import schema
    from forgetd.db.engine import make_engine

    path = tmp_path_factory.mktemp("sqlite-template") / "forgetd.db"
    engine = make_engine(f"sqlite:///{path}")
    schema.upgrade(engine, MIGRATIONS)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    return path


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    import shutil

    target = tmp_path / "forgetd.db"
    shutil.copyfile(sqlite_template, target)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """The same contract against both databases."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


def new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    (path / "data").mkdir(parents=True)
    return path


@pytest.fixture
def settings(home, db_url):
    from forgetd.config import load_settings

    return load_settings(
        {
            "FORGETD_HOME": str(home),
            "FORGETD_DATABASE_URL": db_url,
            "FORGETD_MASTER_KEY": new_master_key(),
            "FORGETD_OPERATOR": "alice",
        }
    )


class Operators:
    """api contexts for several operators on one database (four-eyes needs two people)."""

    def __init__(self, settings) -> None:
        from forgetd import api

        self._api = api
        self.settings = settings
        self._ctxs: dict[str, object] = {}

    def __call__(self, name: str = "alice"):
        if name not in self._ctxs:
            self._ctxs[name] = self._api.open_context(replace(self.settings, operator=name))
        return self._ctxs[name]

    def close(self) -> None:
        for ctx in self._ctxs.values():
            ctx.close()


@pytest.fixture
def ops(settings):
    operators = Operators(settings)
    yield operators
    operators.close()


@pytest.fixture
def ctx(ops):
    return ops("alice")


def make_model_dir(path: Path) -> Path:
    from forgetd.demo.lifecycle import build_demo_weights

    return build_demo_weights(path)


@pytest.fixture
def model(ctx, tmp_path) -> str:
    """A registered model named `credit-mlp` (tabular weights and the applicants' records the lifecycle demo
    registers: requests name `applicant-0001` … `applicant-0024`)."""
    from forgetd import api
    from forgetd.demo.lifecycle import build_demo_dataset

    dataset = build_demo_dataset(tmp_path / "model-dataset.json")
    api.model_register(ctx, "credit-mlp", "tabular_classifier", str(make_model_dir(tmp_path / "model")),
                       dataset=str(dataset))
    return "credit-mlp"


@pytest.fixture
def cli_env(settings) -> dict[str, str]:
    """Environment for running `forgetd` as a subprocess against the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGETD_")}
    env.update(
        FORGETD_HOME=str(settings.home),
        FORGETD_DATABASE_URL=settings.database_url,
        FORGETD_MASTER_KEY=settings.master_key_env,
        FORGETD_OPERATOR=settings.operator,
    )
    return env


def run_cli(args: list[str], env: dict[str, str], *, input: str | None = None, cwd: Path | None = None):
    """Run the real console entry point in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "forgetd", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


# --- the tiny causal LM the pipeline, queue and service tests share ----------------------------------

POLICY = """
name: {name}
applies_to: {{kind: data}}
deadline: {{rule: calendar-month, extension_max: P2M}}
identity_required: false
approval: {{required: false}}
recipes: {{causal_lm: npo-lora}}
verification: {{forget_qa_acc_max_over_reference: {qa}, retain_acc_min_ratio: {retain}, mia_auc_max_dev: {mia}}}
compose: {{cadence: "*/15 * * * *", max_batch: 16}}
retention: {{shred_payload_after: P30D}}
"""


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A small people corpus and a 2-layer Llama trained on it for a few seconds (cached per run)."""
    from forgetd.demo.people import PeopleCorpusConfig
    from forgetd.demo.tiny_lm import TinyLMConfig, ensure_tiny_lm, load_demo_corpus
    from forgetd.demo.llm_dataset import write_corpus_dataset

    cfg = TinyLMConfig(
        corpus=PeopleCorpusConfig(seed=3, n_people=30, n_holdout=8, n_forget_candidates=6),
        hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, batch_rows=4, lr=3e-3,
        max_steps=150, eval_every=50, target_qa=0.9,
    )
    root = tmp_path_factory.mktemp("tiny-lm")
    model_dir = ensure_tiny_lm(root, cfg)
    corpus = load_demo_corpus(model_dir)
    dataset = write_corpus_dataset(corpus, root / "dataset.json")
    return model_dir, dataset, [p.id for p in corpus.forget_candidates]


def pipeline_dirs(tmp_path: Path, **policies: tuple[float, float, float]) -> tuple[Path, Path]:
    """`tmp_path/policies` holding POLICY for each name=(qa, retain, mia), and `tmp_path/adapters`, a copy of
    the repository's recipes that a test may edit."""
    import shutil

    policies_dir = tmp_path / "policies"
    policies_dir.mkdir()
    for name, (qa, retain, mia) in policies.items():
        (policies_dir / f"{name}.yaml").write_text(POLICY.format(name=name, qa=qa, retain=retain, mia=mia))
    adapters = tmp_path / "adapters"
    shutil.copytree(REPO / "adapters", adapters)
    return policies_dir, adapters


LOOSE = (1.0, 0.0, 1.0)  # verification passes: what the pipeline tests that are not about verification use


def edit_recipe(path: Path, **train) -> None:
    import yaml

    recipe = yaml.safe_load(path.read_text())
    recipe["train"].update(train)
    path.write_text(yaml.safe_dump(recipe))
