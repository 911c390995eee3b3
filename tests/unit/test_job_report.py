"""What a job that fails unexpectedly prints (forgetd.jobs.runner._report): on the operator's terminal
(`forgetd tick`) one line; in a worker's job log, which is kept, where it failed; never the exception's
message, which may quote data (a driver's statement parameters, a forget text), unless FORGETD_DEBUG=1."""

from __future__ import annotations

import json

import pytest

from forgetd.jobs.queue import Claim
from forgetd.jobs.runner import _report

SECRET = "Zebulon Quintavius 7731"
CLAIM = Claim(job_id=7, attempt=1, owner="w", kind="train", model_id=1, request_ids=("rq_x",), args={},
              lease_seconds=30.0)


def failure() -> BaseException:
    try:
        json.loads('{"texts": ["' + SECRET + '"')  # a real library error whose message quotes its input
    except ValueError as exc:
        assert SECRET in str(exc) or "Expecting" in str(exc)
        return exc
    raise AssertionError("json accepted a truncated document")


@pytest.mark.parametrize("frames", [False, True])
def test_the_message_is_withheld(frames, capsys, monkeypatch):
    monkeypatch.delenv("FORGETD_DEBUG", raising=False)
    exc = ValueError(f"bad row for {SECRET}")
    exc.__traceback__ = failure().__traceback__
    _report(CLAIM, exc, frames=frames)
    err = capsys.readouterr().err
    assert SECRET not in err and "bad row" not in err
    assert err.startswith("job 7 (train) failed: ValueError")
    if frames:
        assert 'File "' in err and "test_job_report.py" in err and "Traceback" not in err
    else:
        assert len(err.splitlines()) == 1 and "FORGETD_DEBUG=1" in err


def test_debug_shows_everything(capsys, monkeypatch):
    monkeypatch.setenv("FORGETD_DEBUG", "1")
    exc = failure()
    _report(CLAIM, exc, frames=False)
    err = capsys.readouterr().err
    assert "Traceback" in err and type(exc).__name__ in err


def test_the_service_log_withholds_messages_too(monkeypatch):
    import io
    import logging

    from forgetd import safe_traceback

    monkeypatch.delenv("FORGETD_DEBUG", raising=False)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(safe_traceback.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("forgetd.test-safe-traceback")
    log.addHandler(handler)
    try:
        try:
            try:
                raise KeyError(SECRET)
            except KeyError as inner:
                raise RuntimeError(f"planning {SECRET}") from inner
        except RuntimeError:
            log.exception("planning failed; the next trigger retries")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert text.startswith("ERROR planning failed; the next trigger retries")
    assert SECRET not in text and "builtins.KeyError: KeyError" in text and "builtins.RuntimeError" in text
    assert 'File "' in text and safe_traceback.WITHHELD in text
