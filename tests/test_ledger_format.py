"""The ledger's line format: every event is written byte for byte as earlier runners
wrote it (so their ledgers and this runner's are one format), and every line replays to
the record its events describe."""

from __future__ import annotations

from pathlib import Path

import orjson
from clocks import FakeClock

from runner.state.events import (
    Delivered,
    Done,
    Failed,
    File,
    Lost,
    Reset,
    Result,
    Snap,
    Submit,
    Task,
    TaskFailed,
    Timeout,
    Uncertain,
    Unsent,
    decode,
    encode,
)
from runner.state.ledger import Ledger, read_index
from runner.state.record import JobState, Phase

FP = "ab" * 32

#: lines as written by the runner before its events were typed (2026-11-28)
EARLIER = b"""\
{"e":"submit","job":"a","t":1700000000.123,"fp":"FP","imgs":2}
{"e":"unsent","job":"a","t":1700000000.123,"status":429}
{"e":"submit","job":"a","t":1700000000.123,"fp":"FP","imgs":2}
{"e":"uncertain","job":"a","t":1700000000.123,"why":"reset"}
{"e":"submit","job":"a","t":1700000000.123,"fp":"FP","imgs":2}
{"e":"task","job":"a","t":1700000000.123,"task":"task_1"}
{"e":"task_failed","job":"a","t":1700000000.123,"task":"task_1","code":"X","msg":"m","class":"retryable"}
{"e":"submit","job":"a","t":1700000000.123,"fp":"FP","imgs":2}
{"e":"task","job":"a","t":1700000000.123,"task":"task_2"}
{"e":"timeout","job":"a","t":1700000000.123,"task":"task_2"}
{"e":"result","job":"a","t":1700000000.123,"task":"task_2","urls":["u1","u2"],"create_ms":1,"complete_ms":2,"cost_ms":3}
{"e":"file","job":"a","t":1700000000.123,"i":0,"path":"images/a/0.png","bytes":10,"sha256":"s0"}
{"e":"file","job":"a","t":1700000000.123,"i":1,"path":"images/a/1.png","bytes":11,"sha256":"s1"}
{"e":"done","job":"a","t":1700000000.123,"task":"task_2","fp":"FP","imgs":2,"submits":4,"ft":1,"unc":1,"urls":["u1","u2"],"files":[{"i":0,"path":"images/a/0.png","bytes":10,"sha256":"s0"},{"i":1,"path":"images/a/1.png","bytes":11,"sha256":"s1"}],"sub_t":1700000000.123,"create_ms":1,"complete_ms":2,"cost_ms":3,"billed":2,"bt":"task_2","unc_imgs":2}
{"e":"submit","job":"b","t":1700000000.123,"fp":"FP","imgs":1}
{"e":"task","job":"b","t":1700000000.123,"task":"task_3"}
{"e":"delivered","job":"b","t":1700000000.123,"task":"task_3","state":"success","urls":["u3"],"code":null,"create_ms":4,"complete_ms":5,"cost_ms":6}
{"e":"lost","job":"b","t":1700000000.123,"code":"URL_EXPIRED","msg":"gone"}
{"e":"reset","job":"b","t":1700000000.123}
{"e":"failed","job":"b","t":1700000000.123,"code":"F","msg":"no","retryable":true}
""".replace(b"FP", FP.encode())


def _write_history(folder: Path) -> Ledger:
    ledger = Ledger(folder, FakeClock(wall=1_700_000_000.123456))
    ledger.open()
    for job, event in [
        ("a", Submit(FP, 2)),
        ("a", Unsent(429)),
        ("a", Submit(FP, 2)),
        ("a", Uncertain("reset")),
        ("a", Submit(FP, 2)),
        ("a", Task("task_1")),
        ("a", TaskFailed("task_1", "X", "m", "retryable")),
        ("a", Submit(FP, 2)),
        ("a", Task("task_2")),
        ("a", Timeout("task_2")),
        ("a", Result("task_2", ("u1", "u2"), 1, 2, 3)),
        ("a", File(0, "images/a/0.png", 10, "s0")),
        ("a", File(1, "images/a/1.png", 11, "s1")),
    ]:
        ledger.append(job, event)
    ledger.append("a", Done(ledger.index.records["a"]))
    for job, event in [
        ("b", Submit(FP, 1)),
        ("b", Task("task_3")),
        ("b", Delivered("task_3", "success", ("u3",), None, 4, 5, 6)),
        ("b", Lost("URL_EXPIRED", "gone")),
        ("b", Reset()),
        ("b", Failed("F", "no", True)),
    ]:
        ledger.append(job, event)
    return ledger


def test_every_event_is_written_as_earlier_runners_wrote_it(tmp_path: Path) -> None:
    _write_history(tmp_path).close()
    assert (tmp_path / "ledger.jsonl").read_bytes() == EARLIER


def test_an_earlier_ledger_replays_to_the_records_its_events_describe(tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_bytes(EARLIER)
    index, report = read_index(tmp_path)
    assert report.lines == EARLIER.count(b"\n") and not report.corrupt
    assert index.status("a", FP)[0::2] == (JobState.DONE, 2) and "a" in index.done
    a = index.get("a")
    assert a is not None and a.phase is Phase.DONE and a.task_id == "task_2"
    assert (a.submits, a.failed_tasks, a.uncertain, a.billed, a.uncertain_images) == (4, 1, 1, 2, 2)
    b = index.records["b"]
    assert b.phase is Phase.FAILED and b.fail_code == "F" and b.retryable
    assert b.billed == 1 and b.failed_tasks == 0, "billed once; reset starts the count afresh"
    index.close()


def test_the_writer_holds_what_replay_reads_back(tmp_path: Path) -> None:
    ledger = _write_history(tmp_path)
    live = {job: ledger.index.get(job) for job in ("a", "b")}
    ledger.close()
    index, _ = read_index(tmp_path)
    assert {job: index.get(job) for job in ("a", "b")} == live
    index.close()


def test_a_snap_line_carries_the_whole_record_and_its_phase(tmp_path: Path) -> None:
    ledger = _write_history(tmp_path)
    rec = ledger.index.records["b"]
    line = encode("b", Snap(rec, "../.."), 1.5)
    decoded = decode(orjson.loads(line))
    assert decoded is not None
    job, t, event = decoded
    assert (job, t) == ("b", 1.5) and isinstance(event, Snap) and event.origin == "../.."
    assert event.record.phase is Phase.FAILED and event.record.fail_code == "F"
    assert event.record.urls == rec.urls and event.record.billed == rec.billed
    ledger.close()


def test_a_line_of_an_unknown_kind_is_kept_apart() -> None:
    assert decode({"e": "later", "job": "x", "t": 1.0}) == ("x", 1.0, None)
    assert decode({"e": "task", "t": 1.0}) is None, "a line that names no job"
