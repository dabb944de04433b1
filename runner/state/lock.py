"""One run per output folder: :class:`FolderLock`, and who holds it when a second run asks.

The lock is an exclusive ``flock`` on ``<output.dir>/.runner.lock``: the kernel releases
it when the holder ends, however it ends (SIGKILL included), so a killed run never leaves
the folder locked. The holder writes ``{"pid", "host", "since"}`` into the file as JSON,
so that a second run's :class:`~runner.errors.LockedError` (exit 5) can name the process,
its host, since when it holds the folder and, on the same host, whether it is still alive
(signal 0).

Some filesystems have no ``flock`` (network and FUSE mounts answering ENOLCK, EOPNOTSUPP
or ENOSYS). There the lock is the existence of ``.runner.lock.excl``, created with
``O_EXCL`` and holding the same JSON, removed on release. A killed run cannot remove it,
so a file naming a process of this host that is no longer alive is taken over, with a
warning; one naming another host is not (that process cannot be checked from here): the
message says to delete the file once sure no run uses the folder.

Owns: the lock files. Must not know: the ledger, the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from runner.errors import LockedError

__all__ = ["LOCK_NAME", "FolderLock", "Holder", "held_by"]

log = logging.getLogger("runner")

LOCK_NAME = ".runner.lock"
#: the lock where the filesystem has no flock: held while it exists
EXCL_NAME = ".runner.lock.excl"
#: errors of flock() meaning "not on this filesystem" rather than "held"
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
#: how long a second run waits for a holder that has just taken the lock to write its name
_NAME_WAIT_S, _NAME_TRIES = 0.02, 10


@dataclass(frozen=True, slots=True)
class Holder:
    """What a lock file says about the run that holds it; any field may be unknown."""

    pid: int | None
    host: str | None
    since: datetime | None

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), datetime.now(UTC).replace(microsecond=0))

    def to_json(self) -> bytes:
        since = self.since.isoformat() if self.since else None
        return orjson.dumps({"pid": self.pid, "host": self.host, "since": since}) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        """The holder a lock file names, None when it names none (empty, an older runner's
        bare pid, damaged)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        pid, host, since = data.get("pid"), data.get("host"), data.get("since")
        when = None
        if isinstance(since, str):
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(since)
        return cls(
            pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
            host if isinstance(host, str) else None,
            when if when is None or when.tzinfo else when.replace(tzinfo=UTC),
        )

    def alive(self) -> bool | None:
        """Whether the process still exists: None when that cannot be told from here
        (another host, or no pid)."""
        if self.pid is None or self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        return True

    def describe(self) -> str:
        """``pid 4242 on host render-01, since 2026-11-28 08:00:12 UTC (3 min ago), still
        running``."""
        if self.pid is None and self.host is None:
            return "the holder is not named in the lock file"
        text = f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'}"
        if self.since is not None:
            age = max(0.0, (datetime.now(UTC) - self.since).total_seconds())
            text += f", since {self.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_ago(age)})"
        alive = self.alive()
        if alive is None:
            return text + "; another host, so whether it is alive cannot be checked from here"
        return text + (", still running" if alive else ", no longer running")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


class FolderLock:
    """The exclusive right to run in one output folder, for one process.

    :meth:`acquire` raises :class:`~runner.errors.LockedError` naming the holder when
    another run has it. ``use_flock=False`` takes the ``O_EXCL`` fallback at once (what
    happens by itself where flock is not supported): for tests.
    """

    def __init__(self, folder: Path, *, use_flock: bool = True) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._use_flock = use_flock
        self._fd: int | None = None
        self._excl: tuple[Path, bytes] | None = None  # the fallback's file, and what we wrote

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._use_flock and self._acquire_flock():
            return
        self._acquire_excl()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a later holder writes its own name anyway
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._excl is not None:
            path, mine = self._excl
            self._excl = None
            with contextlib.suppress(OSError):
                if path.read_bytes() == mine:  # never remove a lock that is not ours
                    path.unlink()

    # -- flock ------------------------------------------------------------------------------

    def _acquire_flock(self) -> bool:
        """Take the flock; False when this filesystem has none (use the fallback)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = self._named_holder(lambda: os.pread(fd, 4096, 0))
            finally:
                os.close(fd)
            raise self._locked(holder, self.path) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().to_json(), 0)
        self._fd = fd
        return True

    @staticmethod
    def _named_holder(read: Callable[[], bytes]) -> Holder | None:
        # The flock is held, so its holder is alive: an empty file or a dead pid means we
        # read between its flock and its write (or a killed predecessor's name). Wait a bit.
        holder = None
        for _ in range(_NAME_TRIES):
            holder = Holder.parse(read())
            if holder is not None and holder.alive() is not False:
                return holder
            time.sleep(_NAME_WAIT_S)
        return holder

    # -- the O_EXCL fallback ----------------------------------------------------------------

    def _acquire_excl(self) -> None:
        path = self.folder / EXCL_NAME
        for _ in range(5):  # each turn loses a race to a run that took the file meanwhile
            mine = Holder.me().to_json()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                try:
                    seen = path.read_bytes()
                except FileNotFoundError:
                    continue  # released meanwhile
                holder = Holder.parse(seen)
                if holder is None or holder.alive() is not False:
                    raise self._locked(holder, path) from None
                log.warning(
                    "taking over the lock %s left by a run that ended without releasing it (%s)",
                    path,
                    holder.describe(),
                )
                self._take_over(path, seen)
                continue
            try:
                os.write(fd, mine)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._excl = (path, mine)
            return
        raise LockedError(f"cannot take the lock {path}: other runs keep taking it; try again")

    def _take_over(self, path: Path, seen: bytes) -> None:
        """Remove the stale lock file ``path`` if it still holds ``seen``.

        A rename, not an unlink: two runs taking over at once must not both succeed, and
        the loser must not delete the winner's fresh lock. The renamed file is checked;
        if it is not the stale one, it is put back."""
        grave = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return  # another run removed it first
        try:
            if grave.read_bytes() == seen:
                return
            os.rename(grave, path)  # a fresh lock taken meanwhile: give it back
        finally:
            with contextlib.suppress(FileNotFoundError):
                grave.unlink()

    # -- the message ------------------------------------------------------------------------

    def _locked(self, holder: Holder | None, path: Path) -> LockedError:
        who = holder.describe() if holder else "the holder is not named in the lock file"
        advice = "wait for it to finish, or stop it"
        if holder is not None and holder.pid is not None and holder.alive():
            advice += f" (kill {holder.pid})"
        if path.name != EXCL_NAME:
            advice += "; a run that was killed releases the lock by itself"
        elif holder is None or holder.alive() is None:
            advice += (
                f"; this filesystem has no flock, so a run killed there leaves {path} "
                "behind: delete it once sure no run uses the folder"
            )
        else:
            advice += "; a run killed on this host leaves a lock the next run takes over"
        return LockedError(f"another run holds the lock on {self.folder}: {who}; {advice}")


def held_by(folder: Path) -> str | None:
    """What the lock file says of the live run holding ``folder``, or None when no run
    holds it. A shared, non-blocking ``flock`` probe, released at once: it writes
    nothing, and only a run starting in that very folder at that instant could notice it
    (and would exit 5)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        said = os.read(fd, 200).decode(errors="replace").split()
        return " ".join(said) or "a process"
    finally:
        os.close(fd)  # and with it the probe's lock
    return None
