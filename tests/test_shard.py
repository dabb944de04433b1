"""Sharding: N processes each run a fixed 1/N of a campaign in their own folder, and
``--status`` over the campaign reads every shard's ledger."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from runs import TEST_KEY, out_dir, prompts, run_cli, start_cli, wait_until

from runner.cli import main
from runner.errors import ManifestError
from runner.manifest.campaign import load_campaign
from runner.manifest.shards import Split, read_split, record_split, resolve_shard, shard_of
from runner.sim import SimServer
from runner.state.events import Submit
from runner.state.ledger import Ledger, read_index
from runner.state.lock import FolderLock
from runner.state.record import IN_FLIGHT


def _kn(shard: str | None, shards: int | None, env: dict[str, str], recorded=None):
    resolved = resolve_shard(shard, shards, env, recorded)
    return None if resolved is None else resolved[0]


def test_the_shard_comes_from_the_option_or_the_scheduler_environment() -> None:
    assert _kn("2/5", None, {}) == (2, 5)
    assert _kn(None, None, {"JOB_COMPLETION_INDEX": "3"}) is None, "opt-in only"
    assert _kn(None, 4, {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10"}
    assert _kn(None, 4, slurm) == (2, 4), "a Slurm array may start above 0"
    assert _kn(None, 4, {"SLURM_ARRAY_TASK_ID": "1"}) == (1, 4)


def _slurm(task: int, low: int, high: int, count: int, step: int | None = None) -> dict[str, str]:
    env = {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    return env


def test_a_stepped_slurm_array_maps_each_task_to_its_shard() -> None:
    """--array=0-6:2 is four tasks, 0, 2, 4, 6: shards 0, 1, 2, 3 of 4."""
    for k, task in enumerate((0, 2, 4, 6)):
        assert _kn(None, 4, _slurm(task, 0, 6, 4, step=2)) == (k, 4)


def test_a_listed_slurm_array_is_refused_with_the_reason() -> None:
    """--array=1,3: ids 1 and 3 of a two-task array give no shard index."""
    with pytest.raises(ManifestError, match="listed, not a range"):
        resolve_shard(None, 2, _slurm(1, 1, 3, 2), None)


def test_one_index_resubmitted_runs_its_shard_of_the_recorded_split(tmp_path: Path) -> None:
    """sbatch --array=2 after a 4-way split: N from SLURM_ARRAY_TASK_COUNT is 1, but the
    campaign's recorded split makes it shard 2 of 4, not a new split of everything."""
    record_split(tmp_path, Split(4))
    recorded = read_split(tmp_path)
    assert recorded == Split(4)
    assert _kn(None, 1, _slurm(2, 2, 2, 1), recorded) == (2, 4)
    # a deliberate new full split is taken as it is (no layout pays twice)
    assert _kn(None, 8, _slurm(5, 0, 7, 8), recorded) == (5, 8)


def test_an_index_resubmitted_with_n_fixed_in_the_script_keeps_its_shard() -> None:
    """The recipe writes N=4 in the script: `sbatch --array=2` then has one task (id 2,
    SLURM_ARRAY_TASK_MIN 2); it is shard 2 of the recorded split, not shard 0. A stepped
    split maps through its own step; a listed resubmission (--array=1,3) works too."""
    assert _kn(None, 4, _slurm(2, 2, 2, 1), Split(4)) == (2, 4)
    assert _kn(None, 4, _slurm(3, 1, 3, 2), Split(4)) == (3, 4), "--array=1,3"
    assert _kn(None, 4, _slurm(4, 4, 4, 1), Split(4, 0, 2)) == (2, 4), "of --array=0-6:2"
    assert _kn(None, 4, _slurm(12, 12, 12, 1), Split(4, 10)) == (2, 4), "of --array=10-13"
    # a full array is a split of its own, even over a recorded one
    assert _kn(None, 4, _slurm(12, 10, 13, 4), Split(4)) == (2, 4)


@pytest.mark.parametrize(
    ("env", "recorded", "says"),
    [
        (_slurm(2, 2, 2, 1), None, "no split is recorded yet: submit the whole array first"),
        (_slurm(2, 2, 2, 1), Split(8), "recorded split is 8 shards, array 0-7"),
        (_slurm(9, 9, 9, 1), Split(4), "9 is not an index of the campaign's recorded split"),
        (_slurm(3, 3, 3, 1), Split(4, 0, 2), "recorded split (4 shards, array 0-6:2"),
    ],
)
def test_a_partial_array_that_matches_no_recorded_index_is_refused(env, recorded, says) -> None:
    with pytest.raises(ManifestError, match=re.escape(says)):
        resolve_shard(None, 4, env, recorded)


@pytest.mark.parametrize(
    ("shard", "shards", "env"),
    [
        ("4/4", None, {}),
        ("1-4", None, {}),
        ("0/0", None, {}),
        (None, 4, {}),
        (None, 4, {"JOB_COMPLETION_INDEX": "4"}),
        (None, 4, {"SLURM_ARRAY_TASK_ID": "x"}),
    ],
)
def test_a_wrong_shard_is_an_error_naming_the_option(shard, shards, env) -> None:
    with pytest.raises(ManifestError):
        resolve_shard(shard, shards, env, None)


def test_every_job_belongs_to_exactly_one_shard_stably_and_evenly() -> None:
    ids = [f"job-{n}" for n in range(4000)]
    counts = [0] * 4
    for job_id in ids:
        counts[shard_of(job_id, 4)] += 1
    assert all(900 < c < 1100 for c in counts), counts
    assert shard_of("hero", 7) == 2, "a fixed hash, not Python's salted hash()"


async def test_shards_run_apart_and_status_sees_the_whole_campaign(sim, manifest, capsys):
    path = manifest(prompts(24, "a sharded batch"), limits={"concurrency": 4})
    results = await asyncio.gather(
        *(run_cli(path, sim.base_url, "--shard", f"{k}/3") for k in range(3))
    )
    assert [code for code, _ in results] == [0, 0, 0], results
    out = out_dir(path)
    seen: list[str] = []
    for k in range(3):
        folder = out / "shards" / f"{k}-of-3"
        assert (folder / "ledger.jsonl").is_file() and (folder / "summary.json").is_file()
        lines = (folder / "results.jsonl").read_bytes().splitlines()
        seen += [orjson.loads(x)["id"] for x in lines]
        assert all(shard_of(i, 3) == k for i in seen[-len(lines) :])
    assert len(seen) == len(set(seen)) == 24, "each job once, in exactly one shard"
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    assert main([str(path), "--status", "--log-format", "json"]) == 0
    status = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["jobs"] == 24 and status["done"] == 24 and status["pending"] == 0
    assert main([str(path), "--dry-run", "--shard", "1/3", "--log-format", "json"]) == 0
    plan = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["jobs"] == plan["done"] == sum(shard_of(i, 3) == 1 for i in seen)
    code, _ = await run_cli(path, sim.base_url, "--shard", "0/3")
    assert code == 0 and set(sim.stats.submissions_per_prompt.values()) == {1}


# -- no layout pays twice ---------------------------------------------------------------------


def jobs(n: int, name: str) -> list[dict[str, str]]:
    return [{"id": f"{name}-{i}", "prompt": f"a photo of {name}, variant {i}"} for i in range(n)]


async def run_as(path: Path, sim: SimServer, *extra: str, env: dict[str, str] | None = None):
    """Run the CLI as a process with ``env`` added to its environment; (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner", str(path), "--base-url", sim.base_url, *extra,
        env={**os.environ, "APIXO_API_KEY": TEST_KEY, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def status(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main([str(path), *extra, "--log-format", "json"]) == 0
    data: dict[str, Any] = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return data


def slice_of(ids: list[str], k: int, n: int) -> set[str]:
    return {i for i in ids if shard_of(i, n) == k}


def in_flight(folder: Path) -> set[str]:
    index, _ = read_index(folder)
    return {job for job, rec in index.items() if rec.phase in IN_FLIGHT}


async def kill_after_first_task(path: Path, sim: SimServer, *extra: str) -> set[str]:
    """Start a run, SIGKILL it once the API has made a task; the jobs it left in flight."""
    sim.config.gen_2k_s = (100.0, 100.0)  # 1 s at this time scale: still live at the kill
    proc = await start_cli(path, sim.base_url, *extra)
    await wait_until(lambda: sim.stats.tasks_created >= 1, proc)
    proc.kill()
    await proc.wait()
    sim.config.gen_2k_s = (25.0, 35.0)
    return in_flight(out_dir(path) / shard_path(extra))


def shard_path(extra: tuple[str, ...]) -> str:
    if "--shard" not in extra:
        return "."
    k, n = extra[extra.index("--shard") + 1].split("/")
    return f"shards/{k}-of-{n}"


async def test_an_unsharded_campaign_done_pays_nothing_under_any_split(sim, manifest, capsys):
    path = manifest(jobs(12, "unsharded"), limits={"concurrency": 4})
    ids = [f"unsharded-{i}" for i in range(12)]
    assert (await run_cli(path, sim.base_url))[0] == 0
    out = out_dir(path)
    paid = sim.stats.tasks_created
    assert paid == 12
    (gone,) = (out / "images" / "unsharded-5").iterdir()
    gone.unlink()  # paid for, lost from disk: fetched again from its URL, not paid again
    untouched = {name: (out / name).read_bytes() for name in ("ledger.jsonl", ".runner.lock")}
    for k in range(2):
        assert status(path, capsys, "--dry-run", "--shard", f"{k}/2")["pending"] == 0
        code, err = await run_cli(path, sim.base_url, "--shard", f"{k}/2")
        assert code == 0, err
        assert sim.stats.tasks_created == paid, "a split of a finished campaign paid again"
        folder = out / "shards" / f"{k}-of-2"
        summary = orjson.loads((folder / "summary.json").read_bytes())
        share = len(slice_of(ids, k, 2))
        assert summary["exit_code"] == 0 and summary["jobs"]["done"] == share
        results = [orjson.loads(x) for x in (folder / "results.jsonl").read_bytes().splitlines()]
        assert {r["id"] for r in results} == slice_of(ids, k, 2)
        for r in results:  # the images stay where they were made; the paths lead there
            (file,) = r["files"]
            where = out if r["id"] != "unsharded-5" else folder
            assert (folder / file["path"]).resolve().parent.parent == (where / "images").resolve()
        assert status(path, capsys, "--status", "--shard", f"{k}/2")["done"] == share
    for name, before in untouched.items():
        assert (out / name).read_bytes() == before, f"the unsharded {name} was written to"
    assert sim.stats.requests["file", 200] == 13, "only the lost image was fetched again"
    assert (await run_cli(path, sim.base_url, "--shard", "0/2"))[0] == 0
    assert sim.stats.tasks_created == paid and set(sim.stats.submissions_per_prompt.values()) == {1}


async def test_a_campaign_done_in_two_shards_pays_nothing_unsharded_or_in_three(
    sim, manifest, capsys
):
    path = manifest(jobs(12, "two-shards"), limits={"concurrency": 4})
    runs = await asyncio.gather(*(run_cli(path, sim.base_url, "--shard", f"{k}/2") for k in (0, 1)))
    assert [code for code, _ in runs] == [0, 0], runs
    paid = sim.stats.tasks_created
    assert paid == 12
    generated = sim.stats.count(endpoint="generate")
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.tasks_created == paid, "the unsharded run paid again"
    assert sim.stats.count(endpoint="generate") == generated, "it sent a submission"
    summary = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    assert summary["jobs"]["done"] == 12 and summary["exit_code"] == 0
    for k in range(3):
        code, err = await run_as(path, sim, "--shards", "3", env={"JOB_COMPLETION_INDEX": str(k)})
        assert code == 0, err
    assert sim.stats.tasks_created == paid, "a split into three paid again"
    assert sim.stats.count(endpoint="generate") == generated, "a split sent a submission"
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    whole = status(path, capsys, "--status")
    assert (whole["jobs"], whole["done"], whole["pending"]) == (12, 12, 0)
    assert whole["images_on_disk"] == 12, "each job's images counted once, not once a layout"


async def test_a_job_in_flight_elsewhere_refuses_the_run_until_that_layout_drains(sim, manifest):
    path = manifest(jobs(6, "in-flight"), limits={"concurrency": 1})
    out = out_dir(path)
    flying = await kill_after_first_task(path, sim)
    assert flying, "the killed run left nothing in flight"
    job = sorted(flying)[0]
    k = shard_of(job, 2)
    paid = sim.stats.tasks_created
    code, err = await run_cli(path, sim.base_url, "--shard", f"{k}/2")
    assert code == 2, err
    assert str(out) in err and f"python -m runner {path}" in err and "--shard" not in err
    assert "in flight" in err and f"{len(slice_of(sorted(flying), k, 2))} job" in err
    code, err = await run_as(
        path, sim, "--shards", "3", env={"SLURM_ARRAY_TASK_ID": str(shard_of(job, 3))}
    )
    assert code == 2 and str(out) in err, err
    assert sim.stats.tasks_created == paid, "a refused run sent a submission"
    # What the message says to do: drain the unsharded layout; then the split pays nothing.
    assert (await run_cli(path, sim.base_url))[0] == 0
    paid = sim.stats.tasks_created
    assert (await run_cli(path, sim.base_url, "--shard", f"{k}/2"))[0] == 0
    assert sim.stats.tasks_created == paid


async def test_a_job_in_flight_in_a_shard_refuses_the_unsharded_run_naming_the_shard(sim, manifest):
    path = manifest(jobs(8, "shard-in-flight"), limits={"concurrency": 1})
    folder = out_dir(path) / "shards" / "1-of-2"
    flying = await kill_after_first_task(path, sim, "--shard", "1/2")
    assert flying, "the killed run left nothing in flight"
    paid = sim.stats.tasks_created
    code, err = await run_cli(path, sim.base_url)
    assert code == 2 and str(folder) in err and "--shard 1/2" in err, err
    other_n = f"{shard_of(sorted(flying)[0], 3)}/3"
    code, err = await run_cli(path, sim.base_url, "--shard", other_n)
    assert code == 2 and str(folder) in err, err
    assert sim.stats.tasks_created == paid, "a refused run sent a submission"
    code, err = await run_cli(path, sim.base_url, "--shard", "0/2")
    assert code == 0, f"a shard of the same split is refused: {err}"
    share = [f"a photo of shard-in-flight, variant {i}" for i in range(8)]
    share = [p for i, p in enumerate(share) if shard_of(f"shard-in-flight-{i}", 2) == 0]
    assert [sim.stats.submissions_per_prompt[p] for p in share] == [1] * len(share)


async def test_a_live_run_in_another_layout_refuses_the_run_but_a_sibling_shard_does_not(
    sim, manifest
):
    path = manifest(jobs(6, "locked"), limits={"concurrency": 4})
    out = out_dir(path)
    held = FolderLock(out)
    held.acquire()  # this process stands for a live unsharded run
    try:
        code, err = await run_cli(path, sim.base_url, "--shard", "0/2")
    finally:
        held.release()
    assert code == 2 and str(out) in err and "running" in err, err
    assert sim.stats.tasks_created == 0, "a refused run sent a submission"
    sibling = FolderLock(out / "shards" / "1-of-2")
    sibling.acquire()  # a live shard 1 of 2
    try:
        code, err = await run_cli(path, sim.base_url, "--shard", "0/2")
        assert code == 0, err
        code, err = await run_cli(path, sim.base_url)
        assert code == 2 and "shards/1-of-2" in err, err
    finally:
        sibling.release()
    assert sim.stats.tasks_created == len(slice_of([f"locked-{i}" for i in range(6)], 0, 2))


async def test_status_over_mixed_layouts_counts_each_job_once_in_its_furthest_state(
    sim, manifest, capsys
):
    path = manifest(jobs(9, "mixed"), limits={"concurrency": 4}, retry={"failed_tasks": 0})
    ids = [f"mixed-{i}" for i in range(9)]
    sim.config.p_fail = 1.0  # shard 0 of 2: every task fails (retryable), the jobs fail
    assert (await run_cli(path, sim.base_url, "--shard", "0/2"))[0] == 1
    sim.config.p_fail = 0.0
    failed = slice_of(ids, 0, 2)
    code, err = await run_cli(path, sim.base_url, "--shard", "0/3", "--retry-failed")
    assert code == 0, err
    done = slice_of(ids, 0, 3)
    whole = status(path, capsys, "--status")
    assert whole["jobs"] == 9
    assert whole["done"] == len(done), "done under 3 shards beats failed under 2"
    assert whole["failed"] == len(failed - done)
    assert whole["pending"] == 9 - len(done | failed)
    # failed under 2 shards and never tried here: adopted as failed, not paid again
    before = sim.stats.tasks_created
    assert (await run_cli(path, sim.base_url, "--shard", "1/3"))[0] == (
        1 if failed & slice_of(ids, 1, 3) else 0
    )
    assert sim.stats.tasks_created == before + len(slice_of(ids, 1, 3) - failed)


async def test_a_submission_unanswered_here_is_counted_not_paid_again_when_done_elsewhere(
    sim, manifest
):
    path = manifest(jobs(4, "unanswered"), limits={"concurrency": 4})
    assert (await run_cli(path, sim.base_url))[0] == 0
    paid = sim.stats.tasks_created
    job = next(j for j in load_campaign(path).jobs() if j.id == "unanswered-2")
    k = shard_of(job.id, 2)
    ledger = Ledger(out_dir(path) / "shards" / f"{k}-of-2")
    ledger.open()  # as a run killed between writing its intent and the answer left it
    ledger.append(job.id, Submit(job.fingerprint, 1))
    ledger.close()
    code, err = await run_cli(path, sim.base_url, "--shard", f"{k}/2")
    assert code == 0, err
    assert sim.stats.tasks_created == paid, "a job done in another layout was paid again"
    summary = orjson.loads((ledger.folder / "summary.json").read_bytes())
    assert summary["uncertain_submissions"]["all_runs"] == 1, "the unknown outcome is hidden"
    assert summary["jobs"]["done"] == summary["jobs"]["total"]


async def test_an_array_index_resubmitted_alone_reruns_its_shard_not_the_campaign(sim, manifest):
    """The usual way to rerun a failed Slurm task, `sbatch --array=2 array.sh` with
    `--shards $SLURM_ARRAY_TASK_COUNT`: N is 1 there, but the recorded 4-way split makes
    it shard 2 of 4 again; nothing of the other shards is touched or paid."""
    path = manifest(jobs(16, "array"), limits={"concurrency": 4})
    for k in (0, 1, 3):  # index 2 failed to start, say
        env = {"SLURM_ARRAY_TASK_ID": str(k), "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_COUNT": "4"}  # fmt: skip
        code, err = await run_as(path, sim, "--shards", "4", env=env)
        assert code == 0, err
    before = sim.stats.tasks_created
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "2",
           "SLURM_ARRAY_TASK_MAX": "2", "SLURM_ARRAY_TASK_COUNT": "1"}  # fmt: skip
    code, err = await run_as(path, sim, "--shards", "1", env=env)
    assert code == 0, err
    assert "part of the campaign's 4-way split" in err
    assert (out_dir(path) / "shards" / "2-of-4" / "summary.json").is_file()
    assert not (out_dir(path) / "shards" / "0-of-1").exists()
    assert sim.stats.tasks_created == 16 and before < 16
    assert set(sim.stats.submissions_per_prompt.values()) == {1}


def _array_env(task: int, low: int, high: int, count: int, step: int = 1) -> dict[str, str]:
    return {**_slurm(task, low, high, count, step), "SLURM_ARRAY_JOB_ID": "77"}


async def test_a_stepped_array_with_n_fixed_then_one_index_resubmitted_pays_each_job_once(
    sim, manifest
):
    """The documented recipe (N written in the script) under `--array=0-6:2`: tasks 0, 2,
    4, 6 are shards 0..3 of 4; task 4 stopped early, and `sbatch --array=4` (one task, id
    4, SLURM_ARRAY_TASK_MIN 4) finishes shard 2 of 4; nothing is paid twice. A listed
    array is refused with exit 2 before anything is sent."""
    path = manifest(jobs(16, "stepped"), limits={"concurrency": 4})
    out = out_dir(path)
    ids = [f"stepped-{i}" for i in range(16)]
    for k, task in enumerate((0, 2, 4, 6)):
        extra = ("--deadline", "0") if task == 4 else ()  # this one submits nothing
        code, err = await run_as(
            path, sim, "--shards", "4", *extra, env=_array_env(task, 0, 6, 4, 2)
        )
        assert code == (4 if task == 4 else 0), err
        assert (out / "shards" / f"{k}-of-4" / "ledger.jsonl").is_file()
    assert orjson.loads((out / "shards" / "split.json").read_bytes()) == {
        "n": 4,
        "low": 0,
        "step": 2,
    }
    assert sim.stats.tasks_created == 16 - len(slice_of(ids, 2, 4))
    code, err = await run_as(path, sim, "--shards", "4", env=_array_env(4, 4, 4, 1))
    assert code == 0, err
    assert "part of the campaign's 4-way split" in err and "shard 2 of 4" in err
    assert not (out / "shards" / "0-of-1").exists()
    summary = orjson.loads((out / "shards" / "2-of-4" / "summary.json").read_bytes())
    assert summary["jobs"]["done"] == len(slice_of(ids, 2, 4))
    assert sim.stats.tasks_created == 16 and set(sim.stats.submissions_per_prompt.values()) == {1}
    generated = sim.stats.count(endpoint="generate")
    code, err = await run_as(path, sim, "--shards", "2", env=_array_env(3, 1, 3, 2))  # --array=1,3
    assert code == 2 and "listed, not a range" in err, err
    assert sim.stats.count(endpoint="generate") == generated
