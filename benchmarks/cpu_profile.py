"""Where a runner process spends its CPU: CPU time by thread from ``/proc`` and a py-spy
sampling profile of a stretch of its life, summarised by area (HTTP client, download,
ledger, poller, ...).

py-spy samples with ``--gil``: a sample is taken only from the thread holding the GIL,
so every sample is Python at work (or C code that keeps the GIL), in whichever thread,
and a thread waiting for the GIL or for the disk counts for nothing (without ``--gil``
py-spy cannot tell waiting from working here: its idle detection fails on a process it
pauses). Each sample stands for 1/rate seconds, so an area's samples give its CPU in ms
per task directly. What the kernel measured beyond that is CPU spent with the GIL
released: hashing and CRCs of large buffers (sha256, zlib), system calls (socket sends
and receives, file writes, fsync, renames) and page faults; it is reported as one figure.

py-spy must be installed (``pip install py-spy``) and allowed to attach to the process
(root, or ``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

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
        # on PATH, or beside this Python (a virtualenv not activated)
        exe = shutil.which("py-spy") or shutil.which("py-spy", path=Path(sys.executable).parent)
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
        # --gil: only the thread holding the GIL is sampled; --nonblocking: the process
        # is not paused for each sample (pausing it costs it CPU)
        argv = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--gil"]
        argv += ["--nonblocking", "--rate", str(self.rate), "--output", str(self.path)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

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
    """The area a sample belongs to, from its stack (root first): the deepest runner
    module on it decides; a stack with none is an event-loop callback (socket reads and
    HTTP parsing, the loop's side of a thread hop, timers) or a worker thread's own
    machinery."""
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
    if not frames[0].startswith("_run_module_as_main"):
        return "worker threads (pool machinery)"
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
    path: Path, *, rate: int, tasks: int, cpu_s: dict[str, float], top: int = 20
) -> dict[str, Any]:
    """The samples in ``path`` (taken at ``rate`` a second while ``tasks`` tasks were
    created, the process using ``cpu_s`` seconds of CPU: ``total``, ``main``, ``user``,
    ``system``) as ms of CPU per task: by area, the hottest functions (self time) and
    runner lines (the deepest runner frame of a sample), and what ran with the GIL
    released."""
    areas: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    function_area: dict[str, str] = {}
    samples = 0
    for frames, n in read_raw(path):
        samples += n
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
    tasks = max(tasks, 1)

    def per_task(seconds: float) -> float:
        return round(1000 * seconds / tasks, 3)

    def ms(n: int) -> float:  # n samples, each 1/rate s with the GIL held
        return per_task(n / rate)

    with_gil = samples / rate
    return {
        "raw_stacks": str(path),
        "samples": samples,
        "cpu_ms_per_task": {
            "all threads (from /proc)": per_task(cpu_s["total"]),
            "main thread (from /proc)": per_task(cpu_s["main"]),
            "worker threads (from /proc)": per_task(cpu_s["total"] - cpu_s["main"]),
            "user (from /proc)": per_task(cpu_s["user"]),
            "system (from /proc)": per_task(cpu_s["system"]),
            "holding the GIL (sampled)": per_task(with_gil),
            "GIL released: sha256, zlib, system calls, page faults": per_task(
                max(0.0, cpu_s["total"] - with_gil)
            ),
        },
        "gil_held_by_area_ms_per_task": {a: ms(n) for a, n in areas.most_common()},
        "top_functions_self_ms_per_task": [
            {"function": f, "area": function_area[f], "ms": ms(n)}
            for f, n in functions.most_common(top)
        ],
        "top_runner_lines_ms_per_task": [
            {"line": f, "ms": ms(n)} for f, n in lines.most_common(top)
        ],
    }
