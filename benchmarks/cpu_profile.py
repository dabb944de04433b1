"""Where a runner process spends its CPU: per-thread CPU time from ``/proc`` and a py-spy
sampling profile of a stretch of its life, summarised by area (HTTP client, download,
ledger, poller, ...).

py-spy samples stacks at a fixed rate whether a thread is computing or waiting, and its
own idle detection does not work on a paused process, so the summary counts only the
main thread's samples that are not waiting for the event loop's selector, and turns
their shares into milliseconds with the main thread's CPU time measured by the kernel.
The worker threads (file writes, fsync, reads behind ``asyncio.to_thread`` and aiofiles)
mostly wait in system calls, so their samples say nothing about CPU: their CPU time is
reported as one figure, from ``/proc``.

py-spy must be installed (``pip install py-spy``) and allowed to attach to the process
(root, or ``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: leaf frames of a main thread that waits rather than computes
_IDLE_LEAVES = ("EpollSelector.select (selectors.py", "select (selectors.py")
#: runner frames that every main-thread stack holds: not a place work happens
_ROOT_FILES = ("runner/cli.py", "runner/__main__.py")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def thread_cpu(pid: int) -> dict[str, float] | None:
    """CPU seconds of ``pid`` so far: ``total`` (every thread, living or ended), ``main``
    (its main thread), ``user`` and ``system``; None once it has ended."""
    try:
        proc = _stat_fields(Path(f"/proc/{pid}/stat"))
        main = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
    except (OSError, IndexError):
        return None
    user, system = int(proc[11]) / CLOCK_TICKS, int(proc[12]) / CLOCK_TICKS
    return {
        "total": user + system,
        "user": user,
        "system": system,
        "main": (int(main[11]) + int(main[12])) / CLOCK_TICKS,
    }


def _stat_fields(path: Path) -> list[str]:
    # after the command name: state is field 3, utime 14 and stime 15 (1-based)
    return path.read_text().rsplit(")", 1)[1].split()


class PySpy:
    """``py-spy record`` attached to a process from :meth:`start` to :meth:`stop`,
    writing collapsed stacks (``--format raw``) to ``path``."""

    def __init__(self, path: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.exe = exe
        self.path = path
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def start(self, pid: int) -> None:
        if self.proc is not None:
            return
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(pid), "--format", "raw", "--rate",
             str(self.rate), "--output", str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop sampling; py-spy writes its file on SIGINT (or when the process ends)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.path.is_file():
            self.error = err.decode(errors="replace")[-500:]


def area_of(frames: list[str]) -> str:
    """The area a main-thread sample belongs to, from its stack (root first): the
    deepest runner module on it decides; a stack with none is an event-loop callback
    (socket reads and HTTP parsing, the loop's side of a thread hop, timers)."""
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        path = m["file"] if m else ""
        if not path.startswith("runner/") or path.startswith(_ROOT_FILES):
            continue
        if path.startswith("runner/api/"):
            return "http client: " + _request_kind(frames)
        if path == "runner/run/download.py":
            return "download (hash, file writes, checks)"
        if path.startswith("runner/state/"):
            return "ledger"
        if path in ("runner/run/poller.py", "runner/run/schedule.py", "runner/run/completion.py"):
            return "poller (allocation tick, schedule, worker loop)"
        if path == "runner/run/submit.py":
            return "submitter"
        if path.startswith("runner/present/"):
            return "progress and outputs"
        if path.startswith("runner/manifest/"):
            return "manifest"
        return "jobs, feed, engine"
    joined = ";".join(frames)
    if "aiohttp/" in joined or "_SelectorSocketTransport._read_ready" in joined:
        return "http client: socket reads and parsing (aiohttp callbacks)"
    if "_chain_future" in joined or "_read_from_self" in joined or "concurrent/futures" in joined:
        return "thread hops (event loop side)"
    return "event loop (other callbacks, timers)"


def _request_kind(frames: list[str]) -> str:
    joined = ";".join(frames)
    if "ApiClient.submit" in joined:
        return "submit"
    if "ApiClient.status" in joined:
        return "status polls"
    if "ApiClient.open_file" in joined or "FileStream.chunks" in joined:
        return "image GET"
    return "other"


def read_raw(path: Path) -> Iterable[tuple[list[str], int]]:
    """``(frames root first, count)`` of each line of py-spy's raw output."""
    with path.open() as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                yield stack.split(";"), int(count)


def summarise(
    path: Path, *, main_cpu_ms_per_task: float, other_cpu_ms_per_task: float, top: int = 20
) -> dict[str, Any]:
    """Shares of the main thread's busy samples by area, in ms of CPU per task (the
    main thread's measured CPU shared out by sample counts), its hottest functions
    (self time) and runner lines (the deepest runner frame of a sample), and the worker
    threads' CPU as one figure."""
    areas: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    function_area: dict[str, str] = {}
    busy = idle = threads = 0
    for frames, n in read_raw(path):
        if not frames[0].startswith("_run_module_as_main"):
            threads += n
            continue
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += n
            continue
        busy += n
        area = area_of(frames)
        areas[area] += n
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        functions[leaf] += n
        function_area.setdefault(leaf, area)
        for frame in reversed(frames):
            m = _FRAME.match(frame)
            if m and m["file"].startswith("runner/") and not m["file"].startswith(_ROOT_FILES):
                lines[frame] += n
                break
    if not busy:
        return {"error": "no samples of the main thread at work"}

    def ms(n: int) -> float:
        return round(main_cpu_ms_per_task * n / busy, 3)

    return {
        "raw_stacks": str(path),
        "main_thread_samples": {"busy": busy, "waiting_in_select": idle},
        "cpu_ms_per_task": {
            "main_thread": round(main_cpu_ms_per_task, 3),
            "worker_threads (file I/O, fsync; from /proc)": round(other_cpu_ms_per_task, 3),
        },
        "main_thread_by_area_ms_per_task": {a: ms(n) for a, n in areas.most_common()},
        "main_thread_by_area_share": {a: round(n / busy, 4) for a, n in areas.most_common()},
        "top_functions_self": [
            {"function": f, "area": function_area[f], "ms_per_task": ms(n)}
            for f, n in functions.most_common(top)
        ],
        "top_runner_lines": [{"line": f, "ms_per_task": ms(n)} for f, n in lines.most_common(top)],
    }
