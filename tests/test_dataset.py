"""metadata.jsonl: a finished campaign's folder loads as a Hugging Face ``imagefolder``
dataset with every done job's images, prompts and meta; the file grows as jobs finish
and is rewritten whole (repaired) by --report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from runs import image_files, out_dir, prompts, run_cli_sync, run_engine, start_cli, wait_until

from runner.manifest.campaign import load_campaign
from runner.present.dataset import METADATA_NAME, MetadataWriter


def metadata(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / METADATA_NAME).read_text().splitlines()]


def done_results(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [r for r in rows if r["state"] == "done"]


def _campaign(manifest: Any) -> Path:
    """Matrix variants, meta of several types, a job with several images, a refusal."""
    jobs = [
        {"id": "hero", "prompt": "a glass teapot", "meta": {"sku": "TP-01", "n": 1}},
        {"id": "mug", "prompt": "a stoneware mug", "meta": {"sku": "MG-07", "n": 2.5}},
        {"id": "board", "prompt": "four panels of a paper boat", "max_images": 3,
         "sequential_image_generation": "auto", "matrix": {}},
        {"id": "no", "prompt": "[fail:CONTENT_VIOLATION] refused", "matrix": {}},
    ]  # fmt: skip
    return manifest(jobs, matrix={"aspect_ratio": ["1:1", "16:9"]}, limits={"concurrency": 8})


async def test_metadata_lists_every_image_with_its_prompt_input_and_meta(sim, manifest):
    path = _campaign(manifest)
    assert (await run_engine(path, sim.base_url))[0] == 1
    out = out_dir(path)
    lines = metadata(out)
    assert sorted(line["file_name"] for line in lines) == sorted(
        str(p.relative_to(out)) for p in image_files(out)
    ), "one line per image on disk, its path relative to the folder"
    by_file = {line["file_name"]: line for line in lines}
    for r in done_results(out):
        for f in r["files"]:
            line = by_file[f["path"]]
            assert line["job_id"] == r["id"] and line["meta"] == r["meta"]
            assert {k: line[k] for k in r["input"]} == r["input"], "every input field"
    assert not any(line["job_id"].startswith("no") for line in lines)


async def test_metadata_grows_as_jobs_finish_and_report_rewrites_it(sim, manifest):
    """Killed mid-run (no end-of-run rewrite), the file already lists the jobs done so
    far; --report then rewrites it from the ledger."""
    path = manifest(prompts(24), limits={"concurrency": 2})
    out = out_dir(path)
    ledger = out / "ledger.jsonl"

    def done_in_ledger() -> set[str]:
        if not ledger.exists():
            return set()
        whole = ledger.read_bytes().split(b"\n")[:-1]  # a line being written is not yet one
        return {e["job"] for e in map(json.loads, whole) if e["e"] == "done"}

    proc = await start_cli(path, sim.base_url, "--no-progress")
    await wait_until(lambda: len(done_in_ledger()) >= 4, proc)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    done = done_in_ledger()
    listed = {line["job_id"] for line in metadata(out)}
    assert 4 <= len(done) < 24, "killed mid-run"
    assert listed <= done and len(listed) >= len(done) - 1, (listed, done)
    (out / METADATA_NAME).write_text('{"file_name": "images/gone.png"}\n')
    code, _, err = await asyncio.to_thread(run_cli_sync, path, "--report")
    assert code == 0, err
    assert {line["job_id"] for line in metadata(out)} == done


def test_a_meta_key_of_mixed_types_is_written_as_text(tmp_path: Path):
    (tmp_path / "images").mkdir()
    lines = []
    for i, sku in enumerate(["A-1", 7, None, {"x": 1}]):
        (tmp_path / "images" / f"{i}.png").write_bytes(b"png")
        entry = {"id": f"j{i}", "prompt": f"p{i}", "meta": {"sku": sku, "n": i}}
        lines.append(json.dumps(entry))
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    campaign = load_campaign(tmp_path / "jobs.jsonl")
    from runner.state.record import JobRecord

    writer = MetadataWriter(tmp_path)
    for i, job in enumerate(campaign.jobs()):
        writer.add(job, JobRecord(fp=job.fingerprint, files={0: {"path": f"images/{i}.png"}}))
    writer.commit()
    rows = [json.loads(line) for line in (tmp_path / METADATA_NAME).read_text().splitlines()]
    assert [r["meta"]["sku"] for r in rows] == ["A-1", "7", None, '{"x":1}']
    assert [r["meta"]["n"] for r in rows] == [0, 1, 2, 3], "a key of one type is kept as is"


async def test_load_dataset_finds_every_done_image_with_its_prompt_and_meta(
    sim, manifest, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:
        import datasets
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("datasets is missing: pip install -e '.[test]'")
        pytest.skip("datasets is missing: pip install -e '.[test]'")
    path = _campaign(manifest)
    assert (await run_engine(path, sim.base_url))[0] == 1
    out = out_dir(path)
    ds = await asyncio.to_thread(
        datasets.load_dataset,
        "imagefolder",
        data_dir=str(out),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    expected = {(r["id"], i): r for r in done_results(out) for i in range(len(r["files"]))}
    assert len(ds) == len(expected) == len(image_files(out))
    seen = set()
    for row in ds:
        r = expected[(row["job_id"], row["image_index"])]
        seen.add((row["job_id"], row["image_index"]))
        assert row["prompt"] == r["input"]["prompt"]
        # one struct for the column: a key this job's meta lacks reads as None
        assert {k: v for k, v in (row["meta"] or {}).items() if v is not None} == r["meta"]
        assert row["aspect_ratio"] == r["input"].get("aspect_ratio")
        assert row["image"].size[0] > 0, "the image itself decodes"
    assert seen == set(expected)
