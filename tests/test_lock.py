"""The output folder's lock: exit 5 names the holder (pid, host, since when, alive or not).
Where flock is missing or holds on one node only (detected from the mount table, or
RUNNER_LOCK=file), a lock file with a heartbeat does the same across machines: a stale
heartbeat is taken over from any node, a live one is respected, two contenders never both
win, and a holder whose lock was taken over stops with exit 5."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from runs import TEST_KEY, out_dir, prompts, run_cli, start_cli, wait_until

from runner.errors import LockedError, ManifestError
from runner.sim import SimServer
from runner.state.lock import (
    EXCL_NAME,
    LOCK_NAME,
    TAKEOVER_NAME,
    FolderLock,
    held_by,
    lock_mode,
)

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


# ------------------------------------------------------- which lock: the mount table, RUNNER_LOCK


def mountinfo(fstype: str, options: str, supers: str = "rw", point: str = "/shared") -> str:
    """/proc/self/mountinfo with / on ext4 and ``point`` on ``fstype``."""
    return (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"40 22 0:52 / {point} {options} shared:9 - {fstype} server:/export {supers}\n"
    )


@pytest.mark.parametrize(
    ("fstype", "options", "supers", "mode"),
    [
        ("nfs", "rw,relatime", "rw,vers=3,nolock,proto=tcp", "file"),
        ("nfs4", "rw", "rw,vers=4.2,local_lock=flock", "file"),
        ("nfs4", "rw", "rw,vers=4.2,local_lock=none", "flock"),
        ("nfs", "rw", "rw,vers=3,proto=tcp", "flock"),
        ("lustre", "rw", "rw,localflock", "file"),
        ("lustre", "rw", "rw,lazystatfs", "file"),
        ("lustre", "rw", "rw,flock,lazystatfs", "flock"),
        ("fuse.sshfs", "rw,nosuid", "rw,user_id=0", "file"),
        ("beegfs", "rw", "rw,cfgFile=/etc/beegfs/beegfs-client.conf", "file"),
        ("cifs", "rw", "rw,vers=3.0,nobrl", "file"),
        ("ext4", "rw", "rw", "flock"),
    ],
)
def test_the_lock_is_a_file_where_flock_holds_on_one_node_only(
    tmp_path: Path, fstype: str, options: str, supers: str, mode: str
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    table = mountinfo(fstype, options, supers, point=str(tmp_path))
    got, why = lock_mode(folder, {}, table)
    assert got == mode, why
    assert lock_mode(Path("/elsewhere"), {}, table)[0] == "flock", "/ is ext4"


def test_runner_lock_forces_the_mode_and_a_bad_value_is_an_error(tmp_path: Path) -> None:
    nolock = mountinfo("nfs", "rw", "rw,nolock", point=str(tmp_path))
    assert lock_mode(tmp_path, {"RUNNER_LOCK": "flock"}, nolock) == ("flock", "RUNNER_LOCK=flock")
    assert lock_mode(tmp_path, {"RUNNER_LOCK": "FILE"}, mountinfo("ext4", "rw"))[0] == "file"
    assert lock_mode(tmp_path, {"RUNNER_LOCK": "auto"}, nolock)[0] == "file"
    with pytest.raises(ManifestError, match=r"RUNNER_LOCK.*must be auto, flock or file"):
        lock_mode(tmp_path, {"RUNNER_LOCK": "nfs"})
    with pytest.raises(ManifestError, match="RUNNER_LOCK_STALE"):
        FolderLock(tmp_path, env={"RUNNER_LOCK_STALE": "0"})


def test_a_mount_point_with_a_space_is_read_from_its_escape(tmp_path: Path) -> None:
    folder = tmp_path / "my share"
    folder.mkdir()
    table = mountinfo("nfs", "rw", "rw,nolock", point=str(folder).replace(" ", "\\040"))
    assert lock_mode(folder / "x", {}, table)[0] == "file"


# ------------------------------------------------------------------ the file lock, in-process


def file_lock(folder: Path, stale_s: float = 60.0) -> FolderLock:
    return FolderLock(folder, mode="file", stale_s=stale_s)


def beat_json(pid: int, host: str, age_s: float, token: str = "0123456789abcdef") -> bytes:
    beat = datetime.now(UTC) - timedelta(seconds=age_s)
    return orjson.dumps(
        {
            "pid": pid,
            "host": host,
            "since": (beat - timedelta(minutes=5)).isoformat(),
            "token": token,
            "beat": beat.isoformat(),
        }
    )


def leftovers(folder: Path) -> list[str]:
    names = {p.name for p in folder.iterdir()} - {EXCL_NAME, LOCK_NAME}
    return sorted(n for n in names if n.startswith(".runner.lock"))


def test_fallback_takes_over_a_dead_holders_lock_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = dead_pid()
    (tmp_path / EXCL_NAME).write_bytes(holder_json(gone))
    lock = file_lock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runner"):
        lock.acquire()
    assert f"pid {gone} on host {HOST}" in caplog.text and "no longer running" in caplog.text
    assert "taking over the lock" in caplog.text
    mine = orjson.loads((tmp_path / EXCL_NAME).read_bytes())
    assert mine["pid"] == os.getpid() and mine["host"] == HOST
    lock.release()
    assert not (tmp_path / EXCL_NAME).exists(), "released: the file is gone"
    assert leftovers(tmp_path) == [], "no leftovers of the takeover"


def test_fallback_refuses_a_live_holder_and_leaves_its_file(tmp_path: Path) -> None:
    first = file_lock(tmp_path)
    first.acquire()
    token = orjson.loads((tmp_path / EXCL_NAME).read_bytes())["token"]
    with pytest.raises(LockedError) as caught:
        file_lock(tmp_path).acquire()
    assert f"pid {os.getpid()} on host {HOST}" in str(caught.value)
    assert "still running" in str(caught.value) and "heartbeat" in str(caught.value)
    assert orjson.loads((tmp_path / EXCL_NAME).read_bytes())["token"] == token
    first.release()
    second = file_lock(tmp_path)
    second.acquire()  # free once released
    second.release()


def test_fallback_never_takes_over_a_holder_on_another_host_without_a_heartbeat(
    tmp_path: Path,
) -> None:
    """An older runner's lock file (no heartbeat) on another host cannot be judged."""
    (tmp_path / EXCL_NAME).write_bytes(holder_json(dead_pid(), host="render-07"))
    with pytest.raises(LockedError) as caught:
        file_lock(tmp_path).acquire()
    message = str(caught.value)
    assert "on host render-07" in message and "cannot be checked from here" in message
    assert "delete it once sure no run uses the folder" in message
    assert str(tmp_path / EXCL_NAME) in message


@pytest.mark.parametrize("content", [b"", b"12345\n", b"{not json"])
def test_fallback_refuses_a_lock_file_that_names_no_holder(tmp_path: Path, content: bytes) -> None:
    (tmp_path / EXCL_NAME).write_bytes(content)
    with pytest.raises(LockedError, match="the holder is not named in the lock file"):
        file_lock(tmp_path).acquire()
    assert (tmp_path / EXCL_NAME).read_bytes() == content
    old = time.time() - 120  # ... until it is older than the stale limit
    os.utime(tmp_path / EXCL_NAME, (old, old))
    lock = file_lock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_heartbeat_older_than_the_limit_is_taken_over_from_any_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / EXCL_NAME).write_bytes(beat_json(4242, "render-07", age_s=90))
    lock = file_lock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runner"):
        lock.acquire()
    assert "taking over the lock" in caplog.text and "pid 4242 on host render-07" in caplog.text
    assert "heartbeat stopped" in caplog.text
    assert orjson.loads((tmp_path / EXCL_NAME).read_bytes())["pid"] == os.getpid()
    assert held_by(tmp_path) is not None, "held, for a run of another layout"
    lock.release()
    assert held_by(tmp_path) is None and leftovers(tmp_path) == []


def test_a_live_heartbeat_of_another_host_is_respected(tmp_path: Path) -> None:
    (tmp_path / EXCL_NAME).write_bytes(beat_json(4242, "render-07", age_s=20))
    with pytest.raises(LockedError) as caught:
        file_lock(tmp_path).acquire()
    message = str(caught.value)
    assert "pid 4242 on host render-07" in message and "heartbeat 20 s ago" in message
    assert "takes it over once its heartbeat is 60 s old" in message
    assert held_by(tmp_path) is not None and "render-07" in str(held_by(tmp_path))


def test_the_holder_rewrites_its_heartbeat(tmp_path: Path) -> None:
    lock = file_lock(tmp_path, stale_s=1.2)  # a beat every 0.2 s
    lock.acquire()
    try:
        first = orjson.loads((tmp_path / EXCL_NAME).read_bytes())["beat"]
        deadline = time.monotonic() + 10
        while orjson.loads((tmp_path / EXCL_NAME).read_bytes())["beat"] == first:
            assert time.monotonic() < deadline, "the heartbeat never moved"
            time.sleep(0.05)
        time.sleep(2)  # longer than the limit: still ours, still fresh
        with pytest.raises(LockedError):
            file_lock(tmp_path, stale_s=1.2).acquire()
    finally:
        lock.release()


def test_a_takeover_gives_up_when_the_file_changed_since_it_was_judged(tmp_path: Path) -> None:
    """Two runs judging the same stale file: the slower one must not replace the fresh lock
    the faster one wrote meanwhile."""
    path = tmp_path / EXCL_NAME
    fresh = beat_json(os.getpid(), HOST, age_s=0, token="fresh")
    path.write_bytes(fresh)  # taken by another run after this one read the stale file
    lock = file_lock(tmp_path)
    assert not lock._take_over(beat_json(4242, "render-07", age_s=90), "stale", None)
    assert path.read_bytes() == fresh and leftovers(tmp_path) == []


def test_a_takeover_waits_for_another_runs_and_clears_a_dead_ones(tmp_path: Path) -> None:
    (tmp_path / EXCL_NAME).write_bytes(beat_json(4242, "render-07", age_s=90))
    claim = tmp_path / TAKEOVER_NAME
    claim.write_bytes(beat_json(4343, "render-08", age_s=0, token="other"))  # in progress
    with pytest.raises(LockedError, match="other runs keep taking it"):
        file_lock(tmp_path).acquire()
    claim.write_bytes(beat_json(dead_pid(), HOST, age_s=0, token="killed"))  # left by a kill
    lock = file_lock(tmp_path)
    lock.acquire()
    lock.release()
    assert leftovers(tmp_path) == []


def test_flock_and_file_locks_see_each_other(tmp_path: Path) -> None:
    """A run forced to one kind of lock still sees a run holding the folder by the other."""
    by_flock = FolderLock(tmp_path, mode="flock")
    by_flock.acquire()
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        file_lock(tmp_path).acquire()
    seen = held_by(tmp_path)
    assert seen is not None and seen.startswith(f"pid {os.getpid()} on host "), (
        "another layout is told who holds it in words, not the lock file's JSON"
    )
    by_flock.release()
    by_file = file_lock(tmp_path)
    by_file.acquire()
    with pytest.raises(LockedError, match="heartbeat"):
        FolderLock(tmp_path, mode="flock").acquire()
    by_file.release()


CONTENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from runner.errors import LockedError
    from runner.state.lock import FolderLock
    folder, start = Path(sys.argv[1]), float(sys.argv[2])
    lock = FolderLock(folder, mode="file")
    while time.time() < start:
        time.sleep(0.001)
    try:
        lock.acquire()
    except LockedError:
        print("locked", flush=True)
        sys.exit(5)
    print("got", flush=True)
    time.sleep(4)
    lock.release()
    """
)


def test_of_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    (tmp_path / EXCL_NAME).write_bytes(beat_json(4242, "render-07", age_s=600))
    start = time.time() + 2.5  # every process started and waiting, then all at once
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    said = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(said) == ["got"] + ["locked"] * 5, said
    assert not (tmp_path / EXCL_NAME).exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------- the file lock, CLI


async def start_with(path: Path, sim: SimServer, env: dict[str, str], *extra: str):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner", str(path), "--base-url", sim.base_url, *extra,
        env={**os.environ, "APIXO_API_KEY": TEST_KEY, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run_with(path: Path, sim: SimServer, env: dict[str, str], *extra: str):
    proc = await start_with(path, sim, env, *extra)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


FILE_LOCK = {"RUNNER_LOCK": "file", "RUNNER_LOCK_STALE": "3"}  # a beat every 0.5 s


def excl_holder(folder: Path) -> dict[str, object]:
    try:
        data = orjson.loads((folder / EXCL_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


async def test_runner_lock_file_two_runs_one_folder_the_second_exits_5(sim, manifest) -> None:
    sim.config.time_scale = 1.0  # 25-35 s tasks: the first run holds the folder meanwhile
    path = manifest(prompts(2))
    out = out_dir(path)
    first = await start_with(path, sim, FILE_LOCK, "--no-progress", "--drain", "0")
    try:
        await wait_until(lambda: sim.stats.tasks_created == 2 and bool(excl_holder(out)), first)
        assert first.returncode is None
        holder = excl_holder(out)
        assert holder["pid"] == first.pid and holder["host"] == HOST
        assert not (out / LOCK_NAME).exists(), "no flock taken"
        beat = holder["beat"]
        await wait_until(lambda: excl_holder(out).get("beat") not in (beat, None), first)
        code, err = await run_with(path, sim, FILE_LOCK)
        assert code == 5, err
        assert f"pid {first.pid} on host {HOST}" in err and "heartbeat" in err
        assert sim.stats.count(endpoint="generate") == 2, "the second run sent nothing"
    finally:
        first.send_signal(2)  # SIGINT: a graceful stop (no drain), which releases the lock
        _, err_first = await first.communicate()
    assert first.returncode == 4, err_first.decode()
    assert (
        "output folder lock: the file" in err_first.decode()
        and "RUNNER_LOCK=file" in err_first.decode()
    )
    assert not (out / EXCL_NAME).exists(), "released"


async def test_runner_lock_file_takes_over_a_stale_heartbeat_of_another_node(sim, manifest) -> None:
    path = manifest(prompts(3))
    out = out_dir(path)
    out.mkdir(parents=True)
    (out / EXCL_NAME).write_bytes(beat_json(4242, "render-07", age_s=300))
    code, err = await run_with(path, sim, {"RUNNER_LOCK": "file"})
    assert code == 0, err
    assert "taking over the lock" in err and "pid 4242 on host render-07" in err
    assert "heartbeat stopped 5 min ago (the limit is 60 s)" in err
    assert not (out / EXCL_NAME).exists() and leftovers(out) == []


async def test_runner_lock_file_respects_a_live_heartbeat_of_another_node(sim, manifest) -> None:
    path = manifest(prompts(3))
    out = out_dir(path)
    out.mkdir(parents=True)
    live = beat_json(4242, "render-07", age_s=1)
    (out / EXCL_NAME).write_bytes(live)
    code, err = await run_with(path, sim, {"RUNNER_LOCK": "file"})
    assert code == 5, err
    assert "another run holds the lock" in err and "pid 4242 on host render-07" in err
    assert (out / EXCL_NAME).read_bytes() == live
    assert sim.stats.count(endpoint="generate") == 0


async def test_a_run_whose_lock_is_taken_over_stops_at_once_with_exit_5(sim, manifest) -> None:
    """Another node judged this run's heartbeat stale and took the folder (simulated by
    writing its lock over this run's): the run stops within a beat, writes no summary,
    leaves the other run's lock in place and exits 5."""
    sim.config.time_scale = 1.0
    path = manifest(prompts(3))
    out = out_dir(path)
    proc = await start_with(path, sim, FILE_LOCK, "--no-progress")
    try:
        await wait_until(lambda: sim.stats.tasks_created == 3 and bool(excl_holder(out)), proc)
        assert proc.returncode is None
        theirs = beat_json(4242, "render-07", age_s=0, token="theirs")
        tmp = out / "theirs.tmp"
        tmp.write_bytes(theirs)
        os.replace(tmp, out / EXCL_NAME)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = err_bytes.decode()
    assert proc.returncode == 5, err
    assert f"another run took over the lock on {out}: pid 4242 on host render-07" in err
    assert "finished with exit code 5: stopped at once" in err
    assert (out / EXCL_NAME).read_bytes() == theirs, "the other run's lock was left alone"
    assert not (out / "summary.json").exists(), "no summary written over the other run's"


@pytest.mark.parametrize("mode", [[], ["--dry-run"], ["--status"]])
def test_a_bad_runner_lock_is_exit_2_naming_it(manifest, mode: list[str]) -> None:
    path = manifest(prompts(1))
    done = subprocess.run(
        [sys.executable, "-m", "runner", str(path), "--base-url", "embedded", *mode],
        capture_output=True, text=True, check=False,
        env={**os.environ, "RUNNER_LOCK": "nfs"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "RUNNER_LOCK" in done.stderr and "must be auto, flock or file" in done.stderr
