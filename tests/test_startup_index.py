"""The start-up index (``<output.dir>/.index/``): a start with an unchanged manifest reads
its checked job table instead of checking every job again, a ledger is replayed only from
where the kept state stopped, and the index is a cache only: deleting or damaging it, or
changing what it was made from, changes nothing a user sees but the time a start takes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import orjson
import pytest
from runs import out_dir, run_cli, run_cli_sync

from runner.indexfile import INDEX_DIR
from runner.manifest.campaign import load_campaign
from runner.manifest.jobspec import Job
from runner.manifest.shards import id_hash
from runner.state.events import (
    Done,
    Failed,
    File,
    Lost,
    Result,
    Submit,
    Task,
    TaskFailed,
    Timeout,
    Uncertain,
    decode,
)
from runner.state.index import LedgerIndex
from runner.state.ledger import Ledger, read_index
from runner.state.packed import PackedDone

ASPECTS = ("1:1", "16:9", "9:16")
CHECKED = "start-up index: the manifest's"  # ... N jobs checked
READ = "jobs of the manifest read from"
RESUMED = "read up to byte"


def _job_list(path: Path, n: int) -> Path:
    lines = (
        json.dumps({"id": f"job-{i:03d}", "prompt": f"a photo {i}", "aspect_ratio": ASPECTS[i % 3]})
        for i in range(n)
    )
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _finish(ledger: Ledger, job: str, fp: str, task: str, images: int = 1) -> None:
    ledger.append(job, Submit(fp, images))
    ledger.append(job, Task(task))
    urls = tuple(f"https://x/{task}/{i}" for i in range(images))
    ledger.append(job, Result(task, urls, 1, 5, 4))
    for i in range(images):
        ledger.append(job, File(i, f"images/{job}-{i}.png", 10, "00"))
    ledger.append(job, Done(ledger.index.records[job]))


def _campaign(tmp_path: Path, n: int = 60) -> tuple[Path, list[Job]]:
    """A job list and a ledger holding every kind of standing: done (some after a paid
    retry), failed, lost, live, uncertain, edited since done, and pending."""
    path = _job_list(tmp_path / "m.jsonl", n)
    jobs = list(load_campaign(path).jobs())
    ledger = Ledger(out_dir(path))
    ledger.open()
    for k, job in enumerate(jobs[: n - 12]):
        if k % 7 == 0:  # a task that succeeded, then a resubmission: billed twice
            ledger.append(job.id, Submit(job.fingerprint, 1))
            ledger.append(job.id, Task(f"t0-{k}"))
            ledger.append(job.id, Result(f"t0-{k}", ("https://x/a",), 1, 2, 3))
        _finish(ledger, job.id, job.fingerprint, f"t-{k}", images=1 + k % 2)
    a, b, c, d, e, f = jobs[n - 12 : n - 6]
    ledger.append(a.id, Submit(a.fingerprint, 1))
    ledger.append(a.id, Task("t-a"))
    ledger.append(a.id, TaskFailed("t-a", "SENSITIVE", "refused", "permanent"))
    ledger.append(a.id, Failed("SENSITIVE", "refused", False))
    _finish(ledger, b.id, b.fingerprint, "t-b")
    ledger.append(b.id, Lost("URL_EXPIRED", "gone"))
    ledger.append(c.id, Submit(c.fingerprint, 1))
    ledger.append(c.id, Task("t-c"))
    ledger.append(c.id, Timeout("t-c"))
    ledger.append(d.id, Submit(d.fingerprint, 1))
    ledger.append(d.id, Uncertain("connection lost"))
    _finish(ledger, e.id, "00" * 32, "t-e")  # done, then the manifest changed it
    ledger.append(f.id, Submit(f.fingerprint, 1))
    ledger.close()
    return path, jobs


def _outputs(path: Path, *extra: str) -> dict[str, str]:
    """What --dry-run and --status print (text and JSON)."""
    found = {}
    for args in (("--dry-run",), ("--status",), ("--status", "--log-format", "json")):
        code, stdout, stderr = run_cli_sync(path, *args, *extra)
        assert code == 0, stderr
        found[" ".join(args)] = stdout
    return found


def _verbose(path: Path, *extra: str) -> tuple[str, str]:
    code, stdout, stderr = run_cli_sync(path, "--status", "--verbose", *extra)
    assert code == 0, stderr
    return stdout, stderr


def _same_state(a: LedgerIndex, b: LedgerIndex) -> None:
    assert a.records == b.records
    assert a.done.dump()["lengths"] == b.done.dump()["lengths"]
    assert [list(x) for x in a.done.columns()] == [list(x) for x in b.done.columns()]
    assert (a.billed_images(), a.uncertain_images()) == (b.billed_images(), b.uncertain_images())


def _replayed_whole(folder: Path) -> LedgerIndex:
    """The folder's ledger replayed from its first byte, with no index."""
    index = LedgerIndex(folder / "ledger.jsonl")
    keep = folder / INDEX_DIR / "ledger.bin"
    saved = keep.read_bytes() if keep.exists() else None
    keep.unlink(missing_ok=True)
    try:
        from runner.state.ledger import _replay

        _replay(folder / "ledger.jsonl", index)
    finally:
        if saved is not None:
            keep.write_bytes(saved)
    return index


def test_a_second_start_reads_the_index_instead_of_checking_the_manifest(
    tmp_path: Path,
) -> None:
    path, _ = _campaign(tmp_path)
    first, log = _verbose(path)
    assert CHECKED in log and READ not in log and RESUMED not in log
    assert (out_dir(path) / INDEX_DIR / "jobs.bin").is_file()
    second, log = _verbose(path)
    assert READ in log and CHECKED not in log, "the manifest is not checked again"
    assert RESUMED in log, "the ledger is not replayed again"
    assert second == first
    data = orjson.loads(run_cli_sync(path, "--status", "--log-format", "json")[1])
    assert (data["done"], data["failed"], data["lost"], data["in_flight"]) == (48, 1, 1, 1)
    assert data["changed"] == 1 and data["uncertain_submissions"] == 1


def test_outputs_are_byte_identical_with_and_without_the_index(tmp_path: Path) -> None:
    path, _ = _campaign(tmp_path)
    index = out_dir(path) / INDEX_DIR
    cold = _outputs(path)  # made the index
    assert (index / "jobs.bin").is_file() and (index / "ledger.bin").is_file()
    warm = _outputs(path)
    for name in ("jobs.bin", "ledger.bin"):
        (index / name).unlink()
    rebuilt = _outputs(path)
    assert cold == warm == rebuilt


def test_a_damaged_or_deleted_index_is_rebuilt_with_identical_output(tmp_path: Path) -> None:
    path, _ = _campaign(tmp_path)
    before = _outputs(path)
    index = out_dir(path) / INDEX_DIR
    for name in ("jobs.bin", "ledger.bin"):  # one byte changed in the middle of each
        data = bytearray((index / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (index / name).write_bytes(bytes(data))
    stdout, log = _verbose(path)
    assert CHECKED in log and READ not in log, "a damaged table is not read"
    assert "replaying it whole" in log and RESUMED not in log
    assert stdout == before["--status"]
    _, log = _verbose(path)
    assert READ in log and RESUMED in log, "rebuilt, and read again"
    (index / "jobs.bin").write_bytes(b"runner-index {not json\n")
    (index / "ledger.bin").write_bytes(b"")
    assert _outputs(path) == before
    for name in ("jobs.bin", "ledger.bin"):
        (index / name).unlink()
    index.rmdir()
    assert _outputs(path) == before


def test_an_edit_with_the_same_size_and_time_is_noticed(tmp_path: Path) -> None:
    """The manifest's key is its bytes: a job edited in place, with the file's size and
    modification time put back, is checked again, and reported as changed since done."""
    path, jobs = _campaign(tmp_path)
    before = orjson.loads(run_cli_sync(path, "--dry-run", "--log-format", "json")[1])
    info = path.stat()
    text = path.read_text()
    edited = text.replace('"a photo 3"', '"a photo X"')
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)
    code, stdout, log = run_cli_sync(path, "--dry-run", "--log-format", "json", "--verbose")
    assert code == 0, log
    assert CHECKED in log and READ not in log
    after = orjson.loads(stdout)
    assert after["changed"] == before["changed"] + 1 and after["done"] == before["done"] - 1
    assert jobs[3].id in after["ids"]["changed"]


def test_a_ledger_grown_by_a_run_is_replayed_from_where_the_index_stopped(
    tmp_path: Path,
) -> None:
    """What a run appended since the index was kept is replayed on top of it: the state,
    the money counters and every output are those of a replay from the first byte."""
    path, jobs = _campaign(tmp_path)
    out = out_dir(path)
    _verbose(path)  # keeps the index at the ledger's end
    kept_at = (out / "ledger.jsonl").stat().st_size
    ledger = Ledger(out)  # what a run writes: more results, a failure, a retry
    ledger.open()
    c, d, f = jobs[-10], jobs[-9], jobs[-7]
    ledger.append(c.id, Result("t-c", ("https://x/c",), 1, 2, 3))
    ledger.append(c.id, File(0, "images/c.png", 10, "00"))
    ledger.append(c.id, Done(ledger.index.records[c.id]))
    _finish(ledger, d.id, d.fingerprint, "t-d2")
    ledger.append(f.id, Uncertain("killed"))
    _finish(ledger, jobs[0].id, jobs[0].fingerprint, "t-again")  # a done job, paid again
    ledger.close()
    stdout, log = _verbose(path)
    assert f"{RESUMED} {kept_at} " in log, "replayed from where the index stopped"
    warm, _ = read_index(out)
    whole = _replayed_whole(out)
    _same_state(warm, whole)
    assert warm.billed_images() == whole.billed_images() > 0
    warm.close()
    whole.close()
    outputs = _outputs(path)
    assert outputs["--status"] == stdout
    (out / INDEX_DIR / "ledger.bin").unlink()
    assert _outputs(path) == outputs


def test_a_torn_last_line_is_ignored_as_without_the_index(tmp_path: Path) -> None:
    path, _ = _campaign(tmp_path)
    out = out_dir(path)
    _verbose(path)
    with (out / "ledger.jsonl").open("ab") as f:  # a kill in the middle of a line
        f.write(b'{"e":"submit","job":"job-059","t":1.0,"fp":"ab')
    stdout, log = _verbose(path)
    assert RESUMED in log
    index, report = read_index(out)
    assert report.torn_tail
    index.close()
    (out / INDEX_DIR / "ledger.bin").unlink()
    assert _verbose(path)[0] == stdout


async def test_compaction_makes_the_index_start_again(sim, tmp_path: Path) -> None:
    path = _job_list(tmp_path / "m.jsonl", 3)
    out = out_dir(path)
    jobs = list(load_campaign(path).jobs())
    ledger = Ledger(out)
    ledger.open()
    ledger.append(jobs[0].id, Submit(jobs[0].fingerprint, 1))
    ledger.append(jobs[0].id, Task("t-0"))
    ledger.close()
    _verbose(path)  # keeps this ledger's state
    kept_at = (out / "ledger.jsonl").stat().st_size
    ledger = Ledger(out)  # then far more history than state: the next run compacts it
    ledger.open()
    for _ in range(1200):
        ledger.append(jobs[0].id, Timeout("t-0"))
    ledger.close()
    history = (out / "ledger.jsonl").stat().st_size
    stdout, log = _verbose(path)
    assert f"{RESUMED} {kept_at} " in log, "replayed on top of the kept state"
    assert f"up to byte {history} kept" not in log, "a file the next run compacts: not kept"
    code, err = await run_cli(path, sim.base_url, "--deadline", "0", "--drain", "0")
    assert code in (0, 1, 4), err
    compacted = (out / "ledger.jsonl").stat().st_size
    assert compacted < history, "the run compacted the ledger"
    stdout, log = _verbose(path)
    found = re.search(RESUMED + r" (\d+) ", log)
    assert found, "the run kept the compacted ledger's state"
    assert int(found[1]) <= compacted and int(found[1]) != kept_at, "not the old file's state"
    (out / INDEX_DIR / "ledger.bin").unlink()
    assert _verbose(path)[0] == stdout


def test_a_shard_reads_the_same_jobs_with_and_without_the_index(tmp_path: Path) -> None:
    path, jobs = _campaign(tmp_path)
    shard = ("--shard", "1/3")
    first = _outputs(path, *shard)
    data = orjson.loads(first["--status --log-format json"])
    mine = [job for job in jobs if id_hash(job.id) % 3 == 1]
    assert data["jobs"] == len(mine) and data["images"] == sum(j.max_images for j in mine)
    assert (out_dir(path) / INDEX_DIR / "jobs.bin").is_file(), "the campaign's table"
    assert _outputs(path, *shard) == first
    (out_dir(path) / INDEX_DIR / "jobs.bin").unlink()
    assert _outputs(path, *shard) == first


def test_the_job_table_rebuilds_whole_jobs_from_their_lines(tmp_path: Path) -> None:
    """A row of the table (read back from the index) is the very job the manifest holds;
    after a manifest edit that keeps the job file's size, a row is refused, not misread."""
    path = tmp_path / "c.yaml"
    (tmp_path / "jobs.jsonl").write_text(
        '{"id": "a", "prompt": "one"}\n\n{"prompt": "two", "meta": {"k": 1}}\n'
        '{"id": "a", "prompt": "one"}\n'
    )
    path.write_text(
        "jobs_file: jobs.jsonl\noutput: {dir: out}\nmatrix: {aspect_ratio: ['1:1', '16:9']}\n"
        "jobs:\n  - {id: inline, prompt: three}\n"
    )
    (tmp_path / "out").mkdir()
    cold = load_campaign(path)
    expected = list(cold.jobs())
    assert len(expected) == 6 and cold.warnings, "a repeat collapsed, with a warning"
    warm = load_campaign(path)
    assert warm.warnings == cold.warnings and warm.job_count == cold.job_count == 6
    assert [warm.table.job(row) for row in warm.rows()] == expected
    assert [warm.table.id(row) for row in warm.rows()] == [job.id for job in expected]
    assert list(warm.jobs()) == expected
    warm.release_table()  # a run's end lets the table go; a later use checks again
    assert [warm.table.job(row) for row in warm.rows()] == expected
    (tmp_path / "jobs.jsonl").write_text(
        (tmp_path / "jobs.jsonl").read_text().replace("two", "owt")
    )
    with pytest.raises(Exception, match="changed since the manifest was checked"):
        [warm.table.job(row) for row in warm.rows()]


def test_the_table_and_the_ledger_hash_ids_alike() -> None:
    """The table finds done jobs in the ledger's packed index by their id hash."""
    for job_id in ("a", "job-0000001", "hero.16-9", "j" + "f" * 16):
        assert id_hash(job_id) == PackedDone()._find(job_id)[0]


def test_replay_takes_done_lines_as_apply_does(tmp_path: Path) -> None:
    """Replay packs a ``done`` line without making its record (the fast way): the state
    is the one ``LedgerIndex.apply`` reaches line by line, odd lines included."""
    path, jobs = _campaign(tmp_path)
    out = out_dir(path)
    odd = [
        {"e": "done", "job": "x-badfp", "t": 1, "fp": "zz", "files": [{"i": 0}]},
        {"e": "done", "job": "x-early", "t": 1},  # written before done lines carried it all
        {"e": "done", "job": jobs[0].id, "t": 2, "fp": "ab" * 32, "billed": True},
        {"e": "done", "job": "x-unc", "t": 3, "fp": "cd" * 32, "unc": 300, "unc_imgs": 7},
        {"e": "done", "job": "x-twice", "t": 4, "fp": "ef" * 32, "files": [{"i": 1}, {"i": 1}]},
        {"e": "done", "job": "x-urls", "t": 5, "fp": "01" * 32, "urls": ["a", "b"], "ft": 2},
    ]
    with (out / "ledger.jsonl").open("ab") as f:
        f.writelines(orjson.dumps(line) + b"\n" for line in odd)
    compacted = tmp_path / "compacted"
    compacted.mkdir()
    whole = _replayed_whole(out)
    from runner.state.compaction import compact

    (compacted / "ledger.jsonl").write_bytes((out / "ledger.jsonl").read_bytes())
    compact(compacted / "ledger.jsonl", whole, 10.0)
    whole.close()
    for folder in (out, compacted):
        fast = _replayed_whole(folder)
        slow = LedgerIndex(folder / "ledger.jsonl")
        offset = 0
        for raw in (folder / "ledger.jsonl").read_bytes().splitlines(keepends=True):
            decoded = decode(orjson.loads(raw))
            assert decoded is not None
            slow.apply(decoded, offset)
            offset += len(raw)
        _same_state(fast, slow)
        assert len(fast.done) > 40 and "x-badfp" in fast.records and "x-unc" in fast.done
        fast.close()
        slow.close()
