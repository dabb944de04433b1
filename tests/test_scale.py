"""Bounded memory for big campaigns: a done job is one packed int in the index, its
details live in its own ``done`` line and are read back on demand."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from runs import out_dir, prompts, run_cli

from runner.state.events import Done, Failed, File, Result, Submit, Task, Timeout, Uncertain
from runner.state.index import LedgerIndex
from runner.state.ledger import Ledger, read_index
from runner.state.packed import PackedDone
from runner.state.record import Phase

FP = "ab" * 32


def _finish(ledger: Ledger, job: str, fp: str = FP, images: int = 2) -> None:
    ledger.append(job, Submit(fp, images))
    ledger.append(job, Task(f"t-{job}"))
    urls = tuple(f"https://x/{job}/{i}" for i in range(images))
    ledger.append(job, Result(f"t-{job}", urls, 1, 5, None))
    for i in range(images):
        ledger.append(job, File(i, f"images/{job}/{i}.png", 10, "00"))
    ledger.append(job, Done(ledger.index.records[job]))


def test_done_jobs_are_packed_and_read_back_whole(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.open()
    _finish(ledger, "a")
    _finish(ledger, "b", images=1)
    ledger.append("c", Submit(FP, 1))
    ledger.close()
    for index in (ledger.index, read_index(tmp_path)[0]):
        assert len(index.done) == 2 and "a" in index.done and "b" in index.done
        assert "c" not in index.done and set(index.records) == {"c"}
        assert index.status("a", FP)[0::2] == ("done", 2)
        assert index.status("a", "cd" * 32)[0] == "pending", "other content: runs again"
        rec = index.get("a")
        assert rec is not None and rec.phase is Phase.DONE and rec.task_id == "t-a"
        assert [f["path"] for f in rec.files.values()] == ["images/a/0.png", "images/a/1.png"]
        assert rec.create_ms == 1 and rec.submits == 1 and len(rec.urls) == 2
        assert index.done_images() == 3
        index.close()


def test_an_event_for_a_packed_job_revives_its_full_record(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.open()
    _finish(ledger, "a")
    ledger.close()
    ledger = Ledger(tmp_path)
    ledger.open()
    assert "a" in ledger.index.done
    ledger.append("a", File(0, "images/a/0.png", 11, "11"))
    assert "a" not in ledger.index.done and ledger.index.records["a"].files[0]["bytes"] == 11
    ledger.append("a", Done(ledger.index.records["a"]))
    assert "a" in ledger.index.done
    ledger.append("a", Submit("cd" * 32, 1))  # new content under the same id
    assert (
        ledger.index.records["a"].phase is Phase.SUBMITTING
        and ledger.index.records["a"].submits == 1
    )
    ledger.close()
    index, _ = read_index(tmp_path)
    assert "a" in index.records and index.status("a", "cd" * 32)[0] == "pending"
    index.close()


async def test_a_resumed_campaign_reports_done_jobs_from_their_lines(sim, manifest) -> None:
    path = manifest(prompts(6, "a small batch"), limits={"concurrency": 3})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    out = out_dir(path)
    first = (out / "results.jsonl").read_bytes()
    index, _ = read_index(out)
    assert len(index.done) == 6 and not index.records
    index.close()
    victim = orjson.loads(first.splitlines()[0])["files"][0]["path"]
    (out / victim).unlink()
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert (out / victim).is_file(), "a missing image of a done job is fetched again"
    again = [orjson.loads(x) for x in (out / "results.jsonl").read_bytes().splitlines()]
    assert [r["id"] for r in again] == [orjson.loads(x)["id"] for x in first.splitlines()]
    assert all(r["state"] == "done" and r["files"] for r in again)
    assert sum(sim.stats.submissions_per_prompt.values()) == 6, "nothing submitted twice"


def _grown_ledger(folder: Path) -> dict[str, tuple[str, int, int]]:
    """A ledger with more history than state: done, failed, live and uncertain jobs,
    several runs' worth of timeouts; returns each job's status."""
    ledger = Ledger(folder)
    ledger.open()
    for n in range(300):
        _finish(ledger, f"d{n}")
    ledger.append("f", Submit(FP, 1))
    ledger.append("f", Failed("CONTENT_VIOLATION", "no", False))
    ledger.append("l", Submit(FP, 1))
    ledger.append("l", Task("t-l"))
    for _ in range(800):
        ledger.append("l", Timeout("t-l"))
    ledger.append("u", Submit(FP, 1))
    ledger.append("u", Uncertain("killed"))
    ledger.close()
    index = ledger.index
    jobs = [*(f"d{n}" for n in range(300)), *index.records]
    assert len(index) == len(jobs)
    return {job: _status(index, job) for job in jobs}


def _status(index: LedgerIndex, job: str) -> tuple[str, int, int]:
    state, _, images, uncertain = index.status(job, FP)
    return state, images, uncertain


def test_a_grown_ledger_is_compacted_to_one_line_a_job_with_the_same_state(
    tmp_path: Path,
) -> None:
    before = _grown_ledger(tmp_path)
    lines = len((tmp_path / "ledger.jsonl").read_bytes().splitlines())
    assert lines > 2 * len(before) + 1000
    ledger = Ledger(tmp_path)
    ledger.open()
    assert {job: _status(ledger.index, job) for job in before} == before
    assert len((tmp_path / "ledger.jsonl").read_bytes().splitlines()) == len(before)
    rec = ledger.index.records["f"]
    assert rec.phase is Phase.FAILED and rec.fail_code == "CONTENT_VIOLATION"
    assert ledger.index.records["l"].task_id == "t-l" and ledger.index.records["u"].uncertain == 1
    done = ledger.index.get("d7")
    assert done is not None and done.files[1]["path"] == "images/d7/1.png"
    ledger.append("l", Done(ledger.index.records["l"]))  # appending after a compaction still works
    ledger.close()
    again, _ = read_index(tmp_path)
    assert "l" in again and again.get("l") is not None
    again.close()


def test_a_kill_during_compaction_leaves_the_old_ledger_whole(tmp_path: Path, monkeypatch) -> None:
    before = _grown_ledger(tmp_path)
    original = (tmp_path / "ledger.jsonl").read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL between the write and the rename

    monkeypatch.setattr(os, "replace", killed)
    ledger = Ledger(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        ledger.open()
    monkeypatch.undo()
    assert (tmp_path / "ledger.jsonl").read_bytes() == original
    assert (tmp_path / ".ledger.jsonl.compact").exists(), "the half-done rewrite stays aside"
    index, _ = read_index(tmp_path)
    assert {job: _status(index, job) for job in before} == before
    index.close()
    ledger = Ledger(tmp_path)
    ledger.open()  # the next run compacts over the stale temporary file
    assert {job: _status(ledger.index, job) for job in before} == before
    ledger.close()
    assert len((tmp_path / "ledger.jsonl").read_bytes().splitlines()) == len(before)


def test_the_packed_map_keeps_sorted_buckets_through_puts_and_pops() -> None:
    packed = PackedDone()
    for n in range(5000):
        packed.put(f"job-{n}", n, n * 2)
    packed.put("job-7", 70, 71)  # an update, not a second entry
    assert len(packed) == 5000 and packed.get("job-7") == (70, 71)
    assert all(packed.pop(f"job-{n}") for n in range(0, 5000, 2))
    assert not packed.pop("job-0") and "job-0" not in packed and packed.get("job-0") is None
    assert len(packed) == 2500 and packed.get("job-4999") == (4999, 9998)
    assert sorted(packed.metas()) == sorted([71, *(n * 2 for n in range(1, 5000, 2) if n != 7)])
