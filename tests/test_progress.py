"""Progress while a run works: the numbers, the live panel on a terminal, one line per
interval elsewhere (text or JSON), and the engine's snapshot behind them."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pty
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from runs import prompts, run_engine

from runner.present.progress import (
    ConsoleHandler,
    ProgressReporter,
    Snapshot,
    install_console,
    render,
)

BASE = Snapshot(
    t=100.0,
    name="spring",
    jobs=100,
    live=10,
    downloading=2,
    done=20,
    failed=3,
    finished=23,
    images=25,
    images_billed=25,
    requests=400,
    throttled=1,
    rate=600,
    rate_period_s=60.0,
    price_per_image=0.04,
    max_cost=10.0,
)


class _Tty(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def runner_logger() -> Iterator[None]:
    """Restore the ``runner`` logger after a test installs its own console on it."""
    logger = logging.getLogger("runner")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_queued_is_what_is_neither_ended_nor_in_flight():
    assert BASE.queued == 100 - 20 - 3 - 10 - 2


def test_request_rate_is_measured_over_the_last_seconds_against_the_limit():
    reporter = ProgressReporter(lambda: BASE, 10.0, console=None)
    reporter.observe(replace(BASE, t=90.0, requests=0))  # outside the 5 s window
    reporter.observe(replace(BASE, t=96.0, requests=300))
    view = reporter.observe(BASE)  # t=100, 400 requests: 100 in 4 s
    assert view.requests_per_s == pytest.approx(25.0)
    assert view.limit_per_s == pytest.approx(10.0)
    assert view.spend == pytest.approx(25 * 0.04)


def test_eta_follows_the_recent_completion_pace():
    reporter = ProgressReporter(lambda: BASE, 10.0, console=None)
    first = reporter.observe(replace(BASE, t=80.0, finished=3))
    assert first.eta_s is None, "nothing finished yet in this run: no ETA"
    view = reporter.observe(BASE)  # 20 more jobs finished in 20 s
    remaining = BASE.queued + BASE.live + BASE.downloading
    assert view.eta_s == pytest.approx(remaining / 1.0)
    assert view.elapsed_s == pytest.approx(20.0)
    done = reporter.observe(replace(BASE, t=101.0, live=0, downloading=0, done=97))
    assert done.eta_s == 0.0


def test_the_pace_forgets_samples_older_than_its_window():
    reporter = ProgressReporter(lambda: BASE, 10.0, console=None)
    reporter.observe(replace(BASE, t=0.0, finished=0))  # a slow start...
    reporter.observe(replace(BASE, t=40.0, finished=1))
    reporter.observe(replace(BASE, t=50.0, finished=3))
    view = reporter.observe(replace(BASE, t=110.0, finished=63))  # ...then 1 job/s
    assert view.eta_s == pytest.approx(BASE.queued + 12, rel=0.01)


def test_live_panel_shows_every_field():
    view = ProgressReporter(lambda: BASE, 10.0, console=None).observe(BASE)
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=120, color_system=None).print(render(view))
    text = out.getvalue()
    for expected in (
        "spring",
        "23/100 jobs",
        "pending 65",
        "live 10",
        "downloading 2",
        "done 20",
        "failed 3",
        "images 25",
        "requests 0.0/s of 10.0/s",
        "429s 1",
        "spend $1.00 of $10.00",
        "ETA",
    ):
        assert expected in text, f"{expected!r} missing from the panel:\n{text}"


def test_one_line_shows_the_same_numbers():
    view = ProgressReporter(lambda: BASE, 10.0, console=None).observe(BASE)
    line = view.line()
    assert "\n" not in line
    assert line.startswith("progress: 23/100 jobs (pending 65, live 10, downloading 2")
    assert "25 images downloaded this run" in line and "1 429s" in line
    assert "paid 25 images, $1.00 of $10.00" in line


def test_before_anything_finishes_the_eta_says_when_the_first_poll_is_due():
    import dataclasses

    waiting = dataclasses.replace(BASE, done=0, failed=0, finished=0, first_poll_in_s=17.6)
    view = ProgressReporter(lambda: waiting, 10.0, console=None).observe(waiting)
    assert view.eta_s is None
    assert "ETA unknown yet (first poll in 18 s)" in view.line()


def test_the_panel_is_drawn_only_on_a_terminal_in_text_format_when_wanted(runner_logger):
    assert install_console("text", False, True, _Tty()).live_capable
    assert not install_console("text", False, True, io.StringIO()).live_capable, "no tty"
    assert not install_console("text", True, True, _Tty()).live_capable, "--quiet"
    assert not install_console("text", False, False, _Tty()).live_capable, "--no-progress"
    assert not install_console("json", False, True, _Tty()).live_capable, "--log-format json"


async def _lines_until(stream: io.StringIO, n: int, task: asyncio.Task[None]) -> list[str]:
    """The stream's lines once it holds ``n`` of them (the reporter runs as ``task``)."""
    for _ in range(2000):
        lines = stream.getvalue().splitlines()
        if len(lines) >= n or task.done():
            return lines
        await asyncio.sleep(0.005)
    raise AssertionError(f"fewer than {n} lines: {stream.getvalue()!r}")


async def _run_reporter(stream: io.StringIO, n: int, handler: ConsoleHandler) -> list[str]:
    counter = iter(range(10**6))

    def source() -> Snapshot:
        i = next(counter)
        return replace(BASE, t=float(i), requests=10 * i)

    reporter = ProgressReporter(source, line_every_s=2.0, console=handler)
    reporter.SAMPLE_S = 0.001  # samples come from the fake clock above, not from time
    task = asyncio.ensure_future(reporter.run())
    try:
        return await _lines_until(stream, n, task)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_a_terminal_one_concise_line_per_interval(runner_logger):
    stream = io.StringIO()
    handler = install_console("text", False, True, stream)
    lines = await _run_reporter(stream, 3, handler)
    assert len(lines) >= 3
    assert all(" INFO progress: " in line for line in lines), lines
    assert not any("\x1b" in line or "╭" in line for line in lines), "no panel, no escapes"


async def test_json_log_format_makes_the_progress_line_a_json_record(runner_logger):
    stream = io.StringIO()
    handler = install_console("json", False, True, stream)
    lines = await _run_reporter(stream, 2, handler)
    records = [orjson.loads(line) for line in lines]
    for record in records:
        assert record["level"] == "info" and record["msg"].startswith("progress: ")
        progress = record["progress"]
        assert progress["jobs"] == 100 and progress["done"] == 20 and progress["pending"] == 65
        assert progress["requests_per_s"] == pytest.approx(10.0)  # 10 requests per fake second
        assert progress["limit_per_s"] == 10.0 and progress["throttled_429"] == 1
        assert progress["spend_usd"] == 1.0


async def test_no_progress_shows_nothing(runner_logger):
    stream = io.StringIO()
    install_console("text", False, False, stream)
    await ProgressReporter(lambda: BASE, 0.0).run()
    assert stream.getvalue() == ""


def test_log_records_during_the_panel_print_above_it_and_leave_it_whole(runner_logger):
    stream = _Tty()
    handler = install_console("text", False, True, stream)
    view = ProgressReporter(lambda: BASE, 10.0, console=handler).observe(BASE)
    console = Console(file=stream, force_terminal=True, width=100, color_system=None)
    live = handler.start_live(render(view), console=console)
    logging.getLogger("runner").warning("job x failed: CONTENT_VIOLATION")
    live.update(render(view), refresh=True)
    handler.stop_live()
    text = stream.getvalue()
    warning = text.index("job x failed: CONTENT_VIOLATION")
    assert text.rindex("pending 65") > warning, "the panel is drawn again below the record"
    shown = text.replace("\x1b[?25h", "").rstrip()  # minus "show the cursor again"
    assert text.count("╭") >= 2 and shown.endswith("╯"), "ends on a whole panel"
    handler.emit(logging.makeLogRecord({"msg": "after", "levelno": 20, "levelname": "INFO"}))
    assert stream.getvalue().endswith("after\n"), "plain lines again once the panel is gone"


async def test_engine_snapshot_counts_a_finished_run(sim, manifest):
    path = manifest([*prompts(5), {"prompt": "a pair", "max_images": 2}])
    code, engine = await run_engine(path, sim.base_url, progress_every_s=0.0)
    assert code == 0
    snap = engine.snapshot()
    assert (snap.jobs, snap.done, snap.failed, snap.queued, snap.live) == (6, 6, 0, 0, 0)
    assert snap.images == snap.images_billed == 7
    api_requests = sim.stats.count(endpoint="generate") + sim.stats.count(endpoint="status")
    assert snap.requests == api_requests, "API requests only, downloads excluded"
    assert snap.rate == 10000 and snap.rate_period_s == 60.0


def test_demo_shows_the_live_panel_on_a_terminal(tmp_path: Path):
    """The demo, run with stderr on a pseudo-terminal, draws the panel and ends on it."""
    demo = Path(__file__).parent.parent / "manifests" / "demo.yaml"
    shutil.copy(demo, tmp_path / "demo.yaml")
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", str(tmp_path / "demo.yaml")],
        stderr=slave,
        stdout=subprocess.DEVNULL,
        env=env,
        timeout=120,
        check=False,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text
    assert "runner: demo" in text and "╭" in text, "the panel was drawn"
    assert "24/24 jobs" in text, "its last frame shows every job ended"
    for field in ("pending", "live", "downloading", "done", "failed", "429s", "spend", "ETA"):
        assert field in text
    assert "finished with exit code 0" in text
    assert " INFO progress: " not in text, "no progress lines while the panel is up"
