"""The campaign view: ``--report`` without ``--shard`` over a split campaign writes
campaign-report.html, campaign-results.jsonl, campaign-summary.json and
campaign-metadata.jsonl in ``output.dir``, every job once, every image linked where it
lies (``shards/K-of-N/images/...``); the unsharded layout's own files there are left
alone."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
from runs import out_dir, run_cli, run_cli_sync
from test_shard import jobs, slice_of

from runner.manifest.shards import shard_of


def report(path: Path) -> tuple[str, str]:
    """Run ``--report`` (no --shard) as a user would; its stdout and stderr."""
    code, out, err = run_cli_sync(path, "--report")
    assert code == 0, err
    return out, err


def results(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (out / "campaign-results.jsonl").read_bytes().splitlines()]


def report_files(out: Path) -> list[list[Any]]:
    """[path, thumbnail, bytes, on disk] of every image the campaign report shows."""
    page = (out / "campaign-report.html").read_text()
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert found is not None
    rows = orjson.loads(found.group(1))["J"]
    return [entry for row in rows for entry in row[6]]


def assert_every_path_resolves(out: Path, ids: list[str]) -> None:
    lines = results(out)
    assert sorted(r["id"] for r in lines) == sorted(ids), "each job once"
    assert {r["state"] for r in lines} == {"done"}
    for r in lines:
        (file,) = r["files"]
        assert (out / file["path"]).is_file(), file["path"]
    shown = report_files(out)
    assert len(shown) == len(ids)
    for path, thumb, _, on_disk in shown:
        assert on_disk and (out / path).is_file(), path
        assert thumb is None or (out / thumb).is_file(), thumb
    meta = [orjson.loads(x) for x in (out / "campaign-metadata.jsonl").read_bytes().splitlines()]
    assert sorted(m["job_id"] for m in meta) == sorted(ids)
    assert all((out / m["file_name"]).is_file() for m in meta)


async def test_report_over_two_finished_shards_counts_every_job_once(sim, manifest):
    path = manifest(jobs(12, "halves"), limits={"concurrency": 4})
    ids = [f"halves-{i}" for i in range(12)]
    runs = await asyncio.gather(*(run_cli(path, sim.base_url, "--shard", f"{k}/2") for k in (0, 1)))
    assert [code for code, _ in runs] == [0, 0], runs
    out = out_dir(path)
    assert not (out / "results.jsonl").exists(), "a shard run writes its own folder only"
    stdout, err = report(path)
    assert stdout.strip() == str(out / "campaign-report.html")
    assert "disagree" not in err
    assert_every_path_resolves(out, ids)
    for r in results(out):  # each image where its shard made it
        k = shard_of(r["id"], 2)
        assert r["files"][0]["path"].startswith(f"shards/{k}-of-2/images/"), r
    summary = orjson.loads((out / "campaign-summary.json").read_bytes())
    assert summary["scope"] == "campaign"
    assert summary["jobs"] == {"total": 12, "done": 12}
    assert summary["images"] == 12 and summary["images_paid"] == sim.stats.tasks_created == 12
    assert [(x["folder"], x["exit_code"], x["ledger_jobs"]) for x in summary["layouts"]] == [
        (f"shards/{k}-of-2", 0, len(slice_of(ids, k, 2))) for k in (0, 1)
    ]
    assert summary["disagreements"] == {}
    page = (out / "campaign-report.html").read_text()
    assert "every layout" in page and ">12</b>done<" in page


async def test_report_over_two_then_three_shards_counts_each_job_once(sim, manifest):
    path = manifest(jobs(12, "mixed"), limits={"concurrency": 4})
    ids = [f"mixed-{i}" for i in range(12)]
    runs = await asyncio.gather(*(run_cli(path, sim.base_url, "--shard", f"{k}/2") for k in (0, 1)))
    assert [code for code, _ in runs] == [0, 0], runs
    for k in range(3):  # adopts every job: paths ../../shards/K-of-2/images/...
        code, err = await run_cli(path, sim.base_url, "--shard", f"{k}/3")
        assert code == 0, err
    out = out_dir(path)
    _, err = report(path)
    assert "disagree" not in err, "adopted jobs are done in both layouts: no disagreement"
    assert_every_path_resolves(out, ids)
    for r in results(out):
        assert r["files"][0]["path"].startswith(f"shards/{shard_of(r['id'], 2)}-of-2/"), r
    summary = orjson.loads((out / "campaign-summary.json").read_bytes())
    assert summary["jobs"] == {"total": 12, "done": 12} and summary["images"] == 12
    assert summary["images_paid"] == sim.stats.tasks_created == 12, "adopted jobs bill nothing"
    assert len(summary["layouts"]) == 5


async def test_report_warns_once_a_kind_when_layouts_disagree(sim, manifest):
    path = manifest(jobs(9, "torn"), limits={"concurrency": 4}, retry={"failed_tasks": 0})
    ids = [f"torn-{i}" for i in range(9)]
    sim.config.p_fail = 1.0  # shard 0 of 2: every job fails
    assert (await run_cli(path, sim.base_url, "--shard", "0/2"))[0] == 1
    sim.config.p_fail = 0.0
    code, err = await run_cli(path, sim.base_url, "--shard", "0/3", "--retry-failed")
    assert code == 0, err
    torn = slice_of(ids, 0, 2) & slice_of(ids, 0, 3)
    assert torn, "the ids give jobs failed under two shards and done under three"
    out = out_dir(path)
    _, err = report(path)
    warnings = [line for line in err.splitlines() if "disagree" in line]
    assert len(warnings) == 1, err
    assert f"on {len(torn)} job" in warnings[0] and "failed or lost in another" in warnings[0]
    summary = orjson.loads((out / "campaign-summary.json").read_bytes())
    assert summary["disagreements"] == {
        "done in one layout and failed or lost in another": len(torn)
    }
    done = slice_of(ids, 0, 3)
    failed = slice_of(ids, 0, 2) - done
    assert summary["jobs"]["done"] == len(done) and summary["jobs"].get("failed", 0) == len(failed)
    assert {r["id"] for r in results(out) if r["state"] == "done"} == done


async def test_report_over_the_unsharded_folder_and_shards_leaves_the_unsharded_files_alone(
    sim, manifest
):
    """output.dir is the unsharded layout's folder too: the campaign view's files have
    their own names there, and the unsharded run's report.html, results.jsonl,
    summary.json and metadata.jsonl keep its own bytes."""
    path = manifest(jobs(12, "both"), limits={"concurrency": 4})
    ids = [f"both-{i}" for i in range(12)]
    out = out_dir(path)
    assert (await run_cli(path, sim.base_url))[0] == 0  # unsharded, then split: adopted
    own = ("report.html", "results.jsonl", "summary.json", "metadata.jsonl")
    runs = await asyncio.gather(*(run_cli(path, sim.base_url, "--shard", f"{k}/2") for k in (0, 1)))
    assert [code for code, _ in runs] == [0, 0], runs
    before = {name: (out / name).read_bytes() for name in own if (out / name).exists()}
    assert set(before) == set(own), "the unsharded run wrote its files"
    stdout, _ = report(path)
    assert stdout.strip() == str(out / "campaign-report.html")
    for name in own:
        assert (out / name).exists() == (name in before), name
        if name in before:
            assert (out / name).read_bytes() == before[name], f"the campaign view wrote {name}"
    assert_every_path_resolves(out, ids)
    summary = orjson.loads((out / "campaign-summary.json").read_bytes())
    assert summary["scope"] == "campaign" and summary["jobs"] == {"total": 12, "done": 12}
    assert summary["images_paid"] == sim.stats.tasks_created == 12, "adopted: paid once"
    layouts = {x["folder"]: x for x in summary["layouts"]}
    assert set(layouts) == {".", "shards/0-of-2", "shards/1-of-2"}
    own_summary = orjson.loads(before["summary.json"])
    assert "scope" not in own_summary and own_summary["jobs"]["done"] == 12
    assert layouts["."]["exit_code"] == own_summary["exit_code"] == 0
    page = (out / "campaign-report.html").read_text()
    assert "campaign-results.jsonl" in page
