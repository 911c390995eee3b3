"""Joining a Ray cluster: an address is parsed and waited for with a bound, and what cannot be joined is an
operator error naming where the address came from (Ray itself retried an unanswered address for minutes)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from forgetd.errors import ConfigError, InputError
from forgetd.jobs.executors.ray import _host_port, _wait_for_port

pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)),
    ("ray://head:10001", ("head", 10001)),
    ("[::1]:6379", ("::1", 6379)),
    ("head-node", None),
    ("head:", None),
    ("head:0", None),
    ("head:70000", None),
    ("head:port", None),
    (":6379", None),
    ("auto", None),
])
def test_host_port(address, expected):
    assert _host_port(address) == expected


def test_wait_for_port_returns_once_something_listens():
    port = _free_port()
    server = socket.socket()

    def listen_later():
        time.sleep(0.6)
        server.bind(("127.0.0.1", port))
        server.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        started = time.monotonic()
        assert _wait_for_port("127.0.0.1", port, 10.0) is None
        assert 0.5 < time.monotonic() - started < 5.0
    finally:
        thread.join()
        server.close()


def test_wait_for_port_gives_up_with_the_reason():
    started = time.monotonic()
    problem = _wait_for_port("127.0.0.1", _free_port(), 0.5)
    assert problem and "refused" in problem.lower()
    assert time.monotonic() - started < 3.0
    assert _wait_for_port("no-such-host.invalid", 6379, 0.0) == "cannot resolve no-such-host.invalid"


def test_connect_names_the_field_the_address_came_from(monkeypatch):
    from forgetd.jobs.executors.ray import connect

    port = _free_port()
    with pytest.raises(ConfigError) as given:
        connect(f"127.0.0.1:{port}", wait_seconds=0)
    assert given.value.field == "--ray-address" and f"127.0.0.1:{port}" in given.value.message
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError) as from_env:
        connect(None, wait_seconds=0)
    assert from_env.value.field == "RAY_ADDRESS"
    with pytest.raises(InputError, match="host:port"):
        connect("head-node", wait_seconds=0)


def test_waiting_ends_when_the_daemon_is_told_to_stop():
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    problem = _wait_for_port("127.0.0.1", _free_port(), 30.0, stop=stop)
    assert problem and time.monotonic() - started < 3.0  # SIGTERM while waiting for Ray: not 30 s
