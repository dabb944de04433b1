"""The allocator setting of a run: receiving images off a socket stops costing a page
fault per page (runner.run.allocator)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Receives 400 bodies of 200 KB through a socket pair the way asyncio reads a socket (a
# 256 KiB buffer per read, shrunk to what came), keeping the last 16 alive, and prints
# the page faults per body.
_RECEIVE = textwrap.dedent(
    """
    import collections, os, resource, socket, sys
    from runner.run.allocator import tune_for_streaming
    if sys.argv[1] == "tuned":
        assert tune_for_streaming()
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    body = os.urandom(200_000)
    kept = collections.deque(maxlen=16)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(400):
        a.sendall(body)
        got = 0
        while got < len(body):
            chunk = b.recv(262144)
            got += len(chunk)
            kept.append(chunk)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 400)
    """
)


def _faults_per_body(mode: str) -> float:
    env_free = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* of the caller's
    out = subprocess.run(
        [sys.executable, "-c", _RECEIVE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**env_free, "PYTHONPATH": ":".join(sys.path)},
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_receiving_bodies_stops_faulting_a_page_per_page_once_tuned() -> None:
    untuned = _faults_per_body("plain")
    if untuned < 20:
        pytest.skip(f"this C library does not fault per page here ({untuned:.0f} per body)")
    assert _faults_per_body("tuned") < 10, f"untuned: {untuned:.0f} faults per 200 KB body"


def test_glibcs_own_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.run.allocator import tune_for_streaming

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_for_streaming() is False
