"""The output folder's lock: exit 5 names the holder (pid, host, since when, alive or not);
where flock is missing, an O_EXCL lock file does the same and a dead holder's file on this
host is taken over with a warning."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from runs import out_dir, prompts, run_cli, start_cli, wait_until

from runner.errors import LockedError
from runner.sim import SimServer
from runner.state.lock import EXCL_NAME, LOCK_NAME, FolderLock

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def holder_json(pid: int, host: str = HOST, since: str = "2026-11-27T10:00:00+00:00") -> bytes:
    return orjson.dumps({"pid": pid, "host": host, "since": since})


def lock_holder(folder: Path) -> dict[str, object] | None:
    try:
        data = orjson.loads((folder / LOCK_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------- flock, CLI


async def test_a_second_run_exits_5_naming_the_first_runs_pid_host_and_age(
    sim: SimServer, manifest
) -> None:
    sim.config.time_scale = 1.0  # 25-35 s tasks: the first run holds the folder meanwhile
    path = manifest(prompts(2))
    first = await start_cli(path, sim.base_url, "--no-progress")
    try:
        await wait_until(
            lambda: (
                sim.stats.tasks_created == 2
                and (lock_holder(out_dir(path)) or {}).get("pid") == first.pid
            ),
            first,
        )
        assert first.returncode is None, "the first run is still going"
        holder = lock_holder(out_dir(path))
        assert holder is not None and holder["host"] == HOST and isinstance(holder["since"], str)
        submitted = sim.stats.count(endpoint="generate")
        code, err = await run_cli(path, sim.base_url)
        assert code == 5
        assert f"another run holds the lock on {out_dir(path)}" in err
        assert f"pid {first.pid} on host {HOST}, since " in err
        assert " UTC (" in err and "s ago), still running" in err
        assert f"(kill {first.pid})" in err
        assert sim.stats.count(endpoint="generate") == submitted, "the second run sent nothing"
    finally:
        if first.returncode is None:
            first.kill()
        await first.wait()


async def test_a_holder_on_another_host_is_named_as_not_checkable(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run on a shared mount would
        os.write(fd, holder_json(4242, host="render-07"))
        with pytest.raises(LockedError) as caught:
            FolderLock(folder).acquire()
    finally:
        os.close(fd)
    message = str(caught.value)
    assert "pid 4242 on host render-07, since 2026-11-27 10:00:00 UTC" in message
    assert "whether it is alive cannot be checked from here" in message


def test_the_lock_file_names_the_holder_and_is_cleared_on_release(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path)
    lock.acquire()
    holder = lock_holder(tmp_path)
    assert holder is not None and holder["pid"] == os.getpid() and holder["host"] == HOST
    lock.release()
    assert (tmp_path / LOCK_NAME).read_bytes() == b""
    again = FolderLock(tmp_path)
    again.acquire()  # free again
    again.release()


# ----------------------------------------------------------------------- O_EXCL fallback


def test_fallback_takes_over_a_dead_holders_lock_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = dead_pid()
    (tmp_path / EXCL_NAME).write_bytes(holder_json(gone))
    lock = FolderLock(tmp_path, use_flock=False)
    with caplog.at_level(logging.WARNING, logger="runner"):
        lock.acquire()
    assert f"pid {gone} on host {HOST}" in caplog.text and "no longer running" in caplog.text
    assert "taking over the lock" in caplog.text
    mine = orjson.loads((tmp_path / EXCL_NAME).read_bytes())
    assert mine["pid"] == os.getpid() and mine["host"] == HOST
    lock.release()
    assert not (tmp_path / EXCL_NAME).exists(), "released: the file is gone"
    assert not list(tmp_path.glob("*.stale-*")), "no leftovers of the takeover"


def test_fallback_refuses_a_live_holder_and_leaves_its_file(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, use_flock=False)
    first.acquire()
    before = (tmp_path / EXCL_NAME).read_bytes()
    with pytest.raises(LockedError) as caught:
        FolderLock(tmp_path, use_flock=False).acquire()
    assert f"pid {os.getpid()} on host {HOST}" in str(caught.value)
    assert "still running" in str(caught.value)
    assert (tmp_path / EXCL_NAME).read_bytes() == before
    first.release()
    second = FolderLock(tmp_path, use_flock=False)
    second.acquire()  # free once released
    second.release()


def test_fallback_never_takes_over_a_holder_on_another_host(tmp_path: Path) -> None:
    (tmp_path / EXCL_NAME).write_bytes(holder_json(dead_pid(), host="render-07"))
    with pytest.raises(LockedError) as caught:
        FolderLock(tmp_path, use_flock=False).acquire()
    message = str(caught.value)
    assert "on host render-07" in message and "cannot be checked from here" in message
    assert "delete it once sure no run uses the folder" in message
    assert str(tmp_path / EXCL_NAME) in message


@pytest.mark.parametrize("content", [b"", b"12345\n", b"{not json"])
def test_fallback_refuses_a_lock_file_that_names_no_holder(tmp_path: Path, content: bytes) -> None:
    (tmp_path / EXCL_NAME).write_bytes(content)
    with pytest.raises(LockedError, match="the holder is not named in the lock file"):
        FolderLock(tmp_path, use_flock=False).acquire()
    assert (tmp_path / EXCL_NAME).read_bytes() == content


def test_a_takeover_puts_back_a_lock_taken_since_it_was_judged_stale(tmp_path: Path) -> None:
    """Two runs judging the same dead holder: the slower one must not remove the fresh lock
    the faster one took meanwhile."""
    path = tmp_path / EXCL_NAME
    stale = holder_json(dead_pid())
    fresh = holder_json(os.getpid())
    path.write_bytes(fresh)  # taken by another run after this one read ``stale``
    FolderLock(tmp_path, use_flock=False)._take_over(path, stale)
    assert path.read_bytes() == fresh
    assert not list(tmp_path.glob("*.stale-*"))
