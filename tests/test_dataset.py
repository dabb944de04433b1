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
from runner.present.dataset import METADATA_NAME, MetadataWriter, append_job, meta_text
from runner.state.record import JobRecord


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
            assert line["job_id"] == r["id"] and line.get("meta", {}) == meta_text(r["meta"])
            assert {k: line[k] for k in r["input"]} == r["input"], "every input field"
            assert line["resolution"] == r["input"].get("resolution", "2K"), "the API default"
            assert line["sequential_image_generation"] in ("disabled", "auto")
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


def _folder(folder: Path, entries: list[dict[str, Any]]) -> list[Any]:
    """A campaign of ``entries`` in ``folder`` (manifest ``jobs.jsonl``), one small PNG
    per job on disk, its jobs in order."""
    from PIL import Image

    (folder / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    campaign = load_campaign(folder / "jobs.jsonl")
    (campaign.output.dir / "images").mkdir(parents=True)
    jobs = list(campaign.jobs())
    for i, _ in enumerate(jobs):
        Image.new("RGB", (8, 8), (i * 20 % 255, 90, 160)).save(
            campaign.output.dir / "images" / f"{i}.png"
        )
    return jobs


def _record(job: Any, i: int) -> JobRecord:
    return JobRecord(fp=job.fingerprint, files={0: {"path": f"images/{i}.png"}})


#: meta whose values mix types across jobs, at the top and deeper
MIXED = [
    {"sku": "A-1", "n": 0, "tags": ["a", 1], "dims": {"w": 1}, "parts": [{"a": 1}]},
    {"sku": 7, "n": 1.5, "tags": [], "dims": {"w": "wide"}, "parts": [{"b": "x"}, 2]},
    {"sku": None, "flag": True, "dims": {"w": [1, 2]}},
    {},
]


def test_every_meta_value_that_is_not_a_string_is_written_as_json_text(tmp_path: Path):
    """Decided by each line alone, for the lines appended during a run as for the rewrite:
    strings and nulls as they are, anything else as its JSON text; no meta, no key."""
    jobs = _folder(tmp_path, [{"id": f"j{i}", "prompt": f"p{i}", "meta": m} for i, m in
                              enumerate(MIXED)])  # fmt: skip
    out = tmp_path / "out" / "jobs"
    writer = MetadataWriter(out)
    for i, job in enumerate(jobs):
        writer.add(job, _record(job, i))
    writer.commit()
    rewritten = metadata(out)
    (out / METADATA_NAME).unlink()
    for i, job in enumerate(jobs):
        append_job(out, job, _record(job, i))
    assert metadata(out) == rewritten, "an appended line is the line the rewrite writes"
    metas = [r.get("meta") for r in rewritten]
    assert metas[0] == {"sku": "A-1", "n": "0", "tags": '["a",1]', "dims": '{"w":1}',
                        "parts": '[{"a":1}]'}  # fmt: skip
    assert metas[1]["sku"] == "7" and metas[1]["n"] == "1.5"
    assert metas[2] == {"sku": None, "flag": "true", "dims": '{"w":[1,2]}'}
    assert metas[3] is None and "meta" not in rewritten[3], "no meta: no key"


def test_the_api_defaults_are_filled_in(tmp_path: Path):
    b = {"id": "b", "prompt": "q", "resolution": "4K", "aspect_ratio": "16:9"}
    jobs = _folder(
        tmp_path, [{"id": "a", "prompt": "p"}, {**b, "sequential_image_generation": "auto"}]
    )
    out = tmp_path / "out" / "jobs"
    for i, job in enumerate(jobs):
        append_job(out, job, _record(job, i))
    a, b = metadata(out)
    assert (a["resolution"], a["sequential_image_generation"], a.get("aspect_ratio")) == (
        "2K",
        "disabled",
        None,
    ), "the API's defaults; aspect_ratio has none"
    assert (b["resolution"], b["sequential_image_generation"], b["aspect_ratio"]) == (
        "4K",
        "auto",
        "16:9",
    )


def _datasets(tmp_path: Path, monkeypatch: Any) -> Any:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:
        import datasets
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("datasets is missing: pip install -e '.[test]'")
        pytest.skip("datasets is missing: pip install -e '.[test]'")
    return datasets


def test_appended_lines_of_mixed_meta_load_and_a_campaign_without_meta_writes_parquet(
    tmp_path: Path, monkeypatch
):
    """As a run leaves the file before its rewrite (lines appended only): meta of mixed
    types at every depth loads; a campaign without meta has no meta column, so Parquet
    can write it."""
    datasets = _datasets(tmp_path, monkeypatch)
    for name, entries in (
        ("mixed", [{"id": f"j{i}", "prompt": f"p{i}", "meta": m} for i, m in enumerate(MIXED)]),
        ("plain", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(3)]),
    ):
        folder = tmp_path / name
        folder.mkdir()
        jobs = _folder(folder, entries)
        out = folder / "out" / "jobs"
        for i, job in enumerate(jobs):
            append_job(out, job, _record(job, i))
        ds = datasets.load_dataset(
            "imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "c")
        )
        assert len(ds) == len(jobs)
        by_id = {row["job_id"]: row for row in ds}
        if name == "mixed":
            assert by_id["j0"]["meta"]["tags"] == '["a",1]'
            assert by_id["j1"]["meta"]["dims"] == '{"w":"wide"}'
            assert by_id["j3"]["meta"] is None
        else:
            assert "meta" not in ds.column_names
        assert by_id["j0"]["resolution"] == "2K"
        ds.to_parquet(str(tmp_path / f"{name}.parquet"))
        assert (tmp_path / f"{name}.parquet").stat().st_size > 0


async def test_load_dataset_finds_every_done_image_with_its_prompt_and_meta(
    sim, manifest, tmp_path: Path, monkeypatch
):
    datasets = _datasets(tmp_path, monkeypatch)
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
        assert {k: v for k, v in (row["meta"] or {}).items() if v is not None} == meta_text(
            r["meta"]
        )
        assert row["aspect_ratio"] == r["input"].get("aspect_ratio")
        assert row["image"].size[0] > 0, "the image itself decodes"
    assert seen == set(expected)
