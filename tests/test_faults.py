"""The fault suite (``pytest -m faults``): every fault the simulator can script, plus kills,
signals, a full disk and a damaged ledger. After each, the invariants of faults.py hold:
no job lost, no image partial or wrong, nothing written outside the output folder, every
duplicate submission reported as uncertain, a clear exit code.

docs/RELIABILITY.md tabulates these tests and the command that reproduces each."""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import assert_invariants, duplicates, listing, results, summary, tally
from runs import TEST_KEY, out_dir, prompts, run_cli, run_engine, start_cli, wait_until

from runner.sim import SimServer
from runner.state.ledger import read_index
from runner.state.record import Phase

pytestmark = pytest.mark.faults

JOBS = 10

#: Faults that make submissions uncertain (a 5xx, a timeout or a reset after sending) hit
#: a job several times in a row now and then; the default retry.uncertain (3) would fail
#: it UNCERTAIN. These runs allow more, to show everything gets through.
MANY_UNCERTAIN = {"uncertain": 10}

# name -> (simulator knobs, manifest settings, expected exit code)
API_FAULTS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "429_storm_with_retry_after": ({"p_429": 0.5}, {}, 0),
    # Without Retry-After the runner pauses rate_period / 20 (at most 5 s) after a 429.
    "429_storm_without_retry_after": (
        {"p_429": 0.3, "send_retry_after": False},
        {"limits": {"rate_period": 2}},
        0,
    ),
    "5xx_burst": ({"p_5xx": 0.2}, {"retry": MANY_UNCERTAIN}, 0),
    "reset_before_request_sent": ({"p_reset": 0.2}, {"retry": MANY_UNCERTAIN}, 0),
    "reset_after_task_created": ({"p_reset_after": 0.3}, {"retry": MANY_UNCERTAIN}, 0),
    "answers_slower_than_the_timeout": (
        {"p_slow": 0.2, "slow_s": 1.0},
        {"retry": {"request_timeout": 0.3, **MANY_UNCERTAIN}},
        0,
    ),
    "truncated_downloads": ({"p_truncate": 0.4}, {}, 0),
    # wrong bytes behind a valid PNG signature: caught by the PNG's own CRCs, fetched again
    "corrupted_downloads": ({"p_corrupt": 0.3}, {}, 0),
    "wrong_content_type": ({"p_wrong_type": 0.5}, {}, 0),
    "html_error_page_instead_of_image": ({"p_html": 0.3}, {}, 0),
    "oversized_body": ({"p_oversize": 1.0}, {}, 1),
    # Every job lost (paid, images gone): an end, reported, exit 1 like a failure; paying
    # again is --retry-failed.
    "expired_result_urls": ({"url_ttl_s": 0.0}, {}, 1),
    "everything_at_once": (
        {
            "p_429": 0.1,
            "p_5xx": 0.1,
            "p_reset": 0.05,
            "p_reset_after": 0.05,
            "p_truncate": 0.1,
            "p_corrupt": 0.1,
            "p_html": 0.05,
        },
        {"retry": MANY_UNCERTAIN},
        0,
    ),
}


@pytest.mark.parametrize("fault", list(API_FAULTS))
async def test_api_and_download_faults_lose_nothing_and_write_nothing_wrong(
    sim, manifest, tmp_path, fault
):
    """Each fault alone (and all together): the run ends with the expected code, the
    invariants hold, and a fault that only delays work still gets every image."""
    knobs, settings, expected = API_FAULTS[fault]
    settings = {**settings, "limits": {"concurrency": 6, **settings.get("limits", {})}}
    path = manifest(prompts(JOBS), **settings)
    before = listing(tmp_path)
    sim.config.update(knobs)
    code, _ = await run_engine(path, sim.base_url)
    assert code == expected
    ended = assert_invariants(path, sim, JOBS, before, code)
    if fault == "oversized_body":
        assert {r["fail_code"] for r in ended.values()} == {"TOO_LARGE"}
    if fault == "expired_result_urls":
        # Polled again for fresh URLs, which are the same expired ones: lost, not failed.
        index, _ = read_index(out_dir(path))
        assert {r["state"] for r in ended.values()} == {"lost"}
        assert [r.phase for r in index.values()] == [Phase.LOST] * JOBS
        assert {r.fail_code for r in index.values()} == {"URL_EXPIRED"}
        # each refreshed from the task (fresh URLs, expired again) before it was given up
        assert all("expired" in (r.fail_msg or "") for r in index.values())
        assert sim.stats.count("status") >= JOBS * 2
    injected = {k for k in sim.stats.faults if sim.stats.faults[k]}
    assert injected or fault == "expired_result_urls", "the fault really happened"
    tally(fault, sim, failed=sum(r["state"] == "failed" for r in ended.values()))


async def test_stuck_tasks_time_out_stay_live_and_are_polled_not_resubmitted(
    sim, manifest, tmp_path
):
    """Tasks stuck in processing: the run gives them up at polling.timeout (exit 4), keeps
    them live in the ledger, and the next run polls them again without paying twice."""
    sim.config.p_stuck = 0.4
    polling = {"initial_delay": 0.2, "interval": 0.05, "jitter": 0.2, "timeout": 1.0}
    path = manifest(prompts(JOBS), polling=polling)
    before = listing(tmp_path)
    code, _ = await run_engine(path, sim.base_url)
    stuck = sum(1 for t in sim.tasks.values() if t.stuck)
    assert stuck >= 1 and code == 4
    assert_invariants(path, sim, JOBS, before, code)
    index, _ = read_index(out_dir(path))
    assert sum(1 for r in index.values() if r.phase is Phase.LIVE) == stuck
    created = sim.stats.tasks_created
    sim.config.p_stuck = 0.0
    code, _ = await run_engine(path, sim.base_url)
    assert code == 4 and sim.stats.tasks_created == created, "polled again, not resubmitted"
    tally("stuck_tasks", sim)


async def test_random_sigkills_then_resume_lose_nothing(sim, manifest, tmp_path):
    """Five SIGKILLs at random moments (chosen from the simulator's counters: during
    submissions, polls and downloads), then a run to the end: nothing lost or partial,
    every duplicate reported, each kill leaving at most what was in flight."""
    rng = random.Random(2024)
    sim.config.p_slow, sim.config.slow_s = 0.2, 0.05  # answers in flight when the kill lands
    jobs = [*prompts(JOBS - 1), {"prompt": "a triptych", "max_images": 3}]
    path = manifest(jobs, limits={"concurrency": 4})
    before = listing(tmp_path)
    for _ in range(5):
        requests = sum(sim.stats.requests.values()) + rng.randint(1, 25)
        proc = await start_cli(path, sim.base_url)
        await wait_until(lambda r=requests: sum(sim.stats.requests.values()) >= r, proc)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        index, _ = read_index(out_dir(path))
        assert sum(1 for r in index.values() if r.phase is Phase.SUBMITTING) <= 4
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert_invariants(path, sim, JOBS, before, code)
    tally("sigkill", sim, kills=5, uncertain=summary(path)["uncertain_submissions"]["all_runs"])


async def test_sigterm_during_downloads_exits_4_cleanly_and_resume_completes(
    sim, manifest, tmp_path
):
    """SIGTERM while images stream: exit 4 with zero uncertain submissions and no partial
    image; the next run finishes without submitting anything twice."""
    sim.config.image_bytes = 200_000
    path = manifest(prompts(JOBS), limits={"concurrency": 6})
    before = listing(tmp_path)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.images_served >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode in (0, 4), err.decode()
    assert summary(path)["uncertain_submissions"]["this_run"] == 0
    assert_invariants(path, sim, JOBS, before, proc.returncode)
    code, err2 = await run_cli(path, sim.base_url)
    assert code == 0, err2
    assert duplicates(sim) == 0
    assert_invariants(path, sim, JOBS, before, code)
    tally("sigterm", sim)


# -- a full disk ---------------------------------------------------------------------------


def _run_limited(path: Path, base_url: str, file_size_limit: int) -> tuple[int, str]:
    """Run the CLI with RLIMIT_FSIZE (SIGXFSZ ignored): a write past the limit fails with
    EFBIG, as a write to a full disk fails with ENOSPC."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    proc = subprocess.run(
        [sys.executable, "-m", "runner", str(path), "--base-url", base_url, "--no-progress"],
        env={**_env(), "APIXO_API_KEY": TEST_KEY},
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A small tmpfs on ``folder``; yields a function that resizes it. Skips the test
    where mounting is not allowed (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE tests stand in")

    def resize(new: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new}", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def _full_disk_then_space(
    name: str,
    sim: SimServer,
    path: Path,
    before: set[str],
    fill: Callable[[], tuple[int, str]],
) -> None:
    code, err = await asyncio.to_thread(fill)
    assert code == 4, err
    assert "cannot write the output" in err and "free some space and run again" in err
    assert "Traceback" not in err
    out = out_dir(path)
    assert not [p for p in (out / "images").rglob("*") if p.name.endswith(".part")]
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert_invariants(path, sim, JOBS, before, code)
    tally(name, sim)


async def test_disk_full_while_writing_images_stops_with_exit_4_then_rerun_completes(
    sim, manifest, tmp_path
):
    """ENOSPC for real: the output folder on a 256 KiB tmpfs, images of 64 KiB. The run
    stops with exit 4 and a clear message; once the disk is larger, a rerun completes."""
    sim.config.image_bytes = 64 << 10
    path = manifest(prompts(JOBS), output={"dir": "out/campaign"})
    before = listing(tmp_path)
    with _tmpfs(out_dir(path), "256k") as resize:

        def fill() -> tuple[int, str]:
            proc = subprocess.run(
                [sys.executable, "-m", "runner", str(path), "--base-url", sim.base_url],
                env={**_env(), "APIXO_API_KEY": TEST_KEY},
                capture_output=True,
                text=True,
                timeout=60,
            )
            resize("8m")
            return proc.returncode, proc.stderr

        await _full_disk_then_space("enospc_images_tmpfs", sim, path, before, fill)


async def test_file_too_large_while_writing_images_stops_with_exit_4(sim, manifest, tmp_path):
    """Writes of images fail (EFBIG under RLIMIT_FSIZE, the stand-in for ENOSPC where no
    tmpfs can be mounted): exit 4, no partial image, and a rerun completes."""
    sim.config.image_bytes = 64 << 10
    path = manifest(prompts(JOBS))
    before = listing(tmp_path)
    await _full_disk_then_space(
        "efbig_images", sim, path, before, lambda: _run_limited(path, sim.base_url, 32 << 10)
    )


async def test_file_too_large_while_writing_the_ledger_stops_with_exit_4(sim, manifest, tmp_path):
    """The ledger's append fails part-way (the limit falls inside a line): exit 4, the
    fragment is taken back, and a rerun reads whole lines and completes."""
    sim.config.image_bytes = 2048
    path = manifest(prompts(JOBS))
    before = listing(tmp_path)
    await _full_disk_then_space(
        "efbig_ledger", sim, path, before, lambda: _run_limited(path, sim.base_url, 5000)
    )
    ledger = out_dir(path) / "ledger.jsonl"
    assert all(line.endswith(b"}") for line in ledger.read_bytes().splitlines())


# -- a damaged ledger ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage_line", "truncated_mid_line"])
async def test_damaged_ledger_is_read_past_and_the_run_completes(sim, manifest, tmp_path, damage):
    """A ledger with a garbage line in the middle, or cut in the middle of a line halfway
    through, after a kill: the run reads what it can and completes with every image right.
    Submissions whose lines were cut off may be paid again; every other one is reported."""
    path = manifest(prompts(JOBS), limits={"concurrency": 4})
    before = listing(tmp_path)
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= JOBS // 2, proc)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    ledger = out_dir(path) / "ledger.jsonl"
    data = ledger.read_bytes()
    if damage == "garbage_line":
        lines = data.splitlines(keepends=True)
        lines.insert(len(lines) // 2, b"\x00\xff not json {{{\n")
        ledger.write_bytes(b"".join(lines))
    erased = 0
    if damage == "truncated_mid_line":
        cut = len(data) // 2
        ledger.write_bytes(data[:cut])
        # Every submission from the line the cut falls in onwards is destroyed.
        erased = data[data.rfind(b"\n", 0, cut) + 1 :].count(b'"e":"submit"')
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert "Traceback" not in err
    assert_invariants(path, sim, JOBS, before, code, erased)
    assert len(results(path)) == JOBS
    tally(f"ledger_{damage}", sim)
