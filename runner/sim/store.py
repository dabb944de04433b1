"""A simulator's memory: the tasks it created, kept in a state folder across restarts.

Contract:

* The folder holds one file, :data:`STATE_FILE`: append-only JSON lines, each written with
  a single ``os.write`` on an ``O_APPEND`` descriptor before the HTTP answer that reveals
  it, so a ``kill -9`` right after the answer loses nothing (no fsync: the page cache
  outlives the process). Lines by ``kind``:

  - ``secret``: the URL-signing key (hex), written once, when the folder is new;
  - ``task``: a created task with its whole fate (times, image count and size, failCode,
    stuck) and ``credits``, the balance left after it (null: unlimited);
  - ``credits``: a balance set through ``POST /_sim/config``.

* The Bearer token is never written: tasks carry its fingerprint (:func:`key_fingerprint`).
* Reading tolerates a torn last line (a process killed mid-write) and skips any line that
  is not a JSON object of a known kind. :meth:`StateFile.open` cuts a torn tail off
  before appending, so the next line starts clean.
* One server at a time per folder: :meth:`StateFile.open` takes an exclusive ``flock``,
  released by :meth:`StateFile.close` or by the process's death.
* :func:`read_billing` reads what a folder billed without a server and writes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.sim.billing import Billing
from runner.sim.tasks import Submission, Task

STATE_FILE = "sim-state.jsonl"


class StateFolderBusy(RuntimeError):
    """Another simulator has the state folder open."""


def key_fingerprint(token: str) -> str:
    """What tasks record of the Bearer token that submitted them: not the token."""
    return hashlib.sha256(b"apixo-sim-key\x00" + token.encode()).hexdigest()[:32]


def task_record(task: Task, credits: int | None) -> dict[str, Any]:
    """The ``task`` line of ``task``, with the balance left after it."""
    return {
        "kind": "task",
        "task_id": task.task_id,
        "key": task.key,
        "submission": asdict(task.submission),
        "create_ms": task.create_ms,
        "processing_ms": task.processing_ms,
        "complete_ms": task.complete_ms,
        "n_images": task.n_images,
        "image_bytes": task.image_bytes,
        "fail_code": task.fail_code,
        "fail_msg": task.fail_msg,
        "stuck": task.stuck,
        "credits": credits,
    }


def _task(record: dict[str, Any]) -> Task:
    return Task(
        task_id=record["task_id"],
        key=record["key"],
        origin="",
        submission=Submission(**record["submission"]),
        create_ms=record["create_ms"],
        processing_ms=record["processing_ms"],
        complete_ms=record["complete_ms"],
        n_images=record["n_images"],
        image_bytes=record["image_bytes"],
        fail_code=record["fail_code"],
        fail_msg=record["fail_msg"],
        stuck=record["stuck"],
    )


def billed_at_submission(task: Task) -> int:
    """What a task takes off the balance when it is created (``credits_spent``)."""
    return task.n_images if task.makes_images else 0


@dataclass
class Saved:
    """What a state folder holds."""

    secret: bytes | None = None
    tasks: list[Task] = field(default_factory=list)
    # The balance last recorded (None: none recorded, or unlimited at the time).
    credits: int | None = None


def _parse(lines: list[bytes]) -> Saved:
    saved = Saved()
    for line in lines:
        try:
            record = orjson.loads(line)
            kind = record["kind"]
            if kind == "secret" and saved.secret is None:
                saved.secret = bytes.fromhex(record["secret"])
            elif kind == "task":
                saved.tasks.append(_task(record))
                saved.credits = record["credits"]
            elif kind == "credits":
                saved.credits = record["credits"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a torn or foreign line: what it held was never answered
    return saved


def _whole_lines(data: bytes) -> list[bytes]:
    """The complete lines of ``data``; a last line without its newline is torn."""
    return data.split(b"\n")[:-1]


class StateFile:
    """The open state file of a running server: the single writer of its folder."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> tuple[StateFile, Saved]:
        """Lock the folder (creating it), cut off a torn tail and read what it holds.

        Raises :class:`StateFolderBusy` when another simulator has the folder open.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFolderBusy(f"{state_dir}: in use by another simulator") from None
        with open(path, "rb") as f:
            data = f.read()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):
            os.ftruncate(fd, whole)  # a torn last line: append after the last whole one
        return cls(fd, path), _parse(_whole_lines(data))

    def append(self, record: dict[str, Any]) -> None:
        """Write one line with one ``os.write``; raises ``OSError`` if it did not all go."""
        line = orjson.dumps(record) + b"\n"
        if os.write(self._fd, line) != len(line):
            raise OSError(f"{self.path}: short write (disk full?)")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock too
            self._fd = -1


def read_billing(state_dir: Path | str) -> dict[str, Any]:
    """What the simulator that kept ``state_dir`` billed over the folder's life.

    Pure: needs no server, writes nothing, and may run while a server uses the folder.
    Returns ``tasks_created`` (every task ever created, however its answer fared),
    ``images_billed`` (images of the tasks in ``success`` by now), ``submissions_per_prompt``
    (tasks created per prompt), ``credits_spent`` (images taken off the balance at
    submission: those of tasks that will succeed) and ``credits`` (the balance last
    recorded; None if unlimited or never recorded). A missing folder bills nothing.
    """
    path = Path(state_dir) / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    saved = _parse(_whole_lines(data))
    billing = Billing()
    for task in saved.tasks:
        billing.add(task)
    return {
        "tasks_created": len(saved.tasks),
        "images_billed": billing.billed(time.time() * 1000),
        "submissions_per_prompt": dict(Counter(t.submission.prompt for t in saved.tasks)),
        "credits_spent": sum(billed_at_submission(t) for t in saved.tasks),
        "credits": saved.credits,
    }
