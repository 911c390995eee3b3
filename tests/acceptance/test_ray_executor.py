"""Acceptance: the Ray executor on a local Ray started by the test. A daemon killed mid-training is
restarted; the new daemon adopts the running Ray actor instead of running the job again."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from forgetd import api
from forgetd.db.models import Job, Request
from tests.acceptance.test_serve import (  # noqa: F401 -- the autouse fixture stops leftover daemons
    Daemon, _no_daemon_outlives_its_test, _pipeline_settings, _service_env, _submit_all, _wait)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def local_ray():
    """A local Ray. Since Ray 2.59 a local cluster authenticates with a token it generates (kept in
    ~/.ray/auth_token unless RAY_AUTH_TOKEN_PATH says otherwise); the daemons get it through the
    environment, as an operator would give it to them."""
    import os
    from pathlib import Path

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token_file.read_text().strip()} if token_file.is_file() else {}
        yield ray.get_runtime_context().gcs_address, auth
    finally:
        ray.shutdown()


def test_a_restarted_daemon_adopts_the_running_ray_job(settings, cli_env, tmp_path, tiny_lm, local_ray):
    model_dir, dataset, people = tiny_lm
    s = _pipeline_settings(settings, tmp_path, batch=1, max_steps=40, stop="fixed")
    ctx = api.open_context(s)
    api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset))
    (request_id,) = _submit_all(ctx, people[:1])
    address, auth = local_ray
    env = _service_env(cli_env, FORGETD_POLICIES_DIR=str(s.policies_dir), FORGETD_ADAPTERS_DIR=str(s.adapters_dir),
                       FORGETD_LEASE_SECONDS="10", **auth)
    args = ("--executor", "ray", "--ray-address", address, "--poll", "0.2", "--plan-every", "0.5",
            "--compose-every", "1")

    def train_job() -> Job | None:
        with ctx.session() as sess:
            return sess.execute(select(Job).where(Job.kind == "train")).scalar_one_or_none()

    first = Daemon(env, tmp_path / "a.log", *args)
    job = _wait(lambda: (j := train_job()) is not None and (j.executor_ref or "").startswith("ray:") and j,
                180, "the train job to start on Ray")
    first.kill()
    time.sleep(1)
    assert train_job().status == "running"  # the actor outlives the daemon and keeps its lease
    second = Daemon(env, tmp_path / "b.log", *args)

    def completed() -> bool:
        with ctx.session() as sess:
            return sess.execute(select(Request.status).where(Request.public_id == request_id)).scalar_one().value == "completed"

    _wait(completed, 300, f"the request to complete; log:\n{(tmp_path / 'b.log').read_text()[-3000:] if (tmp_path / 'b.log').exists() else ''}")
    # the promotion enqueues a `revalidate` job in the same transaction: let it settle too (the intermittent
    # failure this wait removes was that job still queued when the daemon was stopped)
    _wait(lambda: all(j["status"] == "succeeded" for j in api.job_list(ctx)), 120, "every job to settle")
    second.terminate()
    shown = api.job_show(ctx, job.id)
    events = [(e["event"], e["attempt"]) for e in shown["events"]]
    assert events.count(("claimed", 1)) == 1 and not any(e == "claimed" and a > 1 for e, a in events)
    assert ("adopted", 1) in events and ("succeeded", 1) in events
    assert shown["attempts"] == 1 and shown["executor_ref"] == f"ray:forgetd-{job.id}-a1"
    for other in api.job_list(ctx):
        assert other["status"] == "succeeded" and other["executor"] == "ray"
    ctx.close()
