"""Sharding: N processes each run a fixed 1/N of a campaign in their own folder, and
``--status`` over the campaign reads every shard's ledger."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from runs import out_dir, prompts, run_cli

from runner.cli import main
from runner.errors import ManifestError
from runner.shard import resolve_shard, shard_of


def test_the_shard_comes_from_the_option_or_the_scheduler_environment() -> None:
    assert resolve_shard("2/5", None, {}) == (2, 5)
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "3"}) is None, "opt-in only"
    assert resolve_shard(None, 4, {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10"}
    assert resolve_shard(None, 4, slurm) == (2, 4), "a Slurm array may start above 0"
    assert resolve_shard(None, 4, {"SLURM_ARRAY_TASK_ID": "1"}) == (1, 4)


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
        resolve_shard(shard, shards, env)


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
