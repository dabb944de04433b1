"""One run per output folder: :class:`FolderLock`, and who holds it when a second run asks.

Two ways to hold a folder, chosen per folder when the lock is taken (:func:`lock_mode`):

- **flock** (the default): an exclusive ``flock`` on ``<output.dir>/.runner.lock``. The
  kernel releases it when the holder ends, however it ends (SIGKILL included), so a killed
  run never leaves the folder locked. The holder writes ``{"pid", "host", "since"}`` into
  the file as JSON, so that a second run's :class:`~runner.errors.LockedError` (exit 5)
  can name the process, its host, since when it holds the folder and, on the same host,
  whether it is still alive (signal 0).
- **file**: where ``flock`` does not hold across machines. Some filesystems refuse it
  (ENOLCK, EOPNOTSUPP, ENOSYS: Lustre mounted without ``-o flock``); others grant it per
  node only, silently (NFS mounted ``nolock`` or ``local_lock=flock|all``, Lustre
  ``localflock``, FUSE filesystems, BeeGFS by default): two shards on two nodes would both
  "hold" the folder. :func:`lock_mode` reads the folder's filesystem type and mount
  options from ``/proc/self/mountinfo``; ``RUNNER_LOCK=flock|file`` forces a mode. The
  lock is then the file ``.runner.lock.excl``, created atomically (a hard link of a
  complete temporary file, so no one reads it half written), holding the same JSON plus a
  ``token`` of its own and a ``beat``: a thread of the holder rewrites it every
  ``min(5 s, stale / 6)``. A file whose beat is older than the stale limit
  (``RUNNER_LOCK_STALE``, 60 s), or that names a process of this host that has ended, is
  taken over by the next run, from any node, with a warning naming the old holder. A
  holder that finds its file taken over (its own beats had stopped for that long: the
  process or its node was frozen, or the volume unreachable) calls ``on_lost``: the run
  stops at once, exit 5. The beat is compared with the reader's clock: the nodes'
  clocks must agree to within a fraction of the limit (NTP does).

Takeover is serialised by a second file, ``.runner.lock.takeover``, created the same way:
of two runs finding one stale lock, one takes it over; the other then finds a fresh
heartbeat and stops with exit 5. The stale file is replaced by a rename, never removed,
so the lock file never disappears during a takeover. The one race left is a holder
waking from a freeze in the instant it is taken over: both beat once more, and the one
whose file was overwritten notices at its next beat and stops.

Owns: the lock files, and which kind of lock a folder gets. Must not know: the ledger,
the run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

from runner.errors import LockedError, LockLostError, ManifestError

__all__ = [
    "DEFAULT_STALE_S",
    "EXCL_NAME",
    "LOCK_NAME",
    "MODE_ENV",
    "STALE_ENV",
    "TAKEOVER_NAME",
    "FolderLock",
    "Holder",
    "filesystem_of",
    "held_by",
    "lock_mode",
]

log = logging.getLogger("runner")

Mode = Literal["flock", "file"]

LOCK_NAME = ".runner.lock"
#: the lock where flock does not hold across machines: held while it exists and beats
EXCL_NAME = ".runner.lock.excl"
#: who is taking over a stale EXCL_NAME right now
TAKEOVER_NAME = ".runner.lock.takeover"
#: ``auto`` (default), ``flock`` or ``file``: which lock every output folder gets
MODE_ENV = "RUNNER_LOCK"
#: seconds without a heartbeat after which a file lock is taken over
STALE_ENV = "RUNNER_LOCK_STALE"
DEFAULT_STALE_S = 60.0
#: errors of flock() meaning "not on this filesystem" rather than "held"
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
#: how long a second run waits for a holder that has just taken the lock to write its name
_NAME_WAIT_S, _NAME_TRIES = 0.02, 10
#: the tokens of the file locks this process holds now
_HELD: set[str] = set()


def beat_interval(stale_s: float) -> float:
    """How often a holder rewrites its lock file: well inside the stale limit."""
    return min(5.0, stale_s / 6)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Holder:
    """What a lock file says about the run that holds it; any field may be unknown.
    ``token`` and ``beat`` are the file lock's (a holder's own mark, its last heartbeat)."""

    pid: int | None
    host: str | None
    since: datetime | None
    token: str | None = None
    beat: datetime | None = None

    @classmethod
    def me(cls, token: str | None = None, since: datetime | None = None) -> Holder:
        now = _now()
        since = since or now.replace(microsecond=0)
        return cls(os.getpid(), socket.gethostname(), since, token, now if token else None)

    def to_json(self) -> bytes:
        data: dict[str, object] = {
            "pid": self.pid,
            "host": self.host,
            "since": self.since.isoformat() if self.since else None,
        }
        if self.token is not None:
            data["token"] = self.token
            data["beat"] = self.beat.isoformat() if self.beat else None
        return orjson.dumps(data) + b"\n"

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
        pid, host, token = data.get("pid"), data.get("host"), data.get("token")
        return cls(
            pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
            host if isinstance(host, str) else None,
            _when(data.get("since")),
            token if isinstance(token, str) else None,
            _when(data.get("beat")),
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
        running`` (a file lock adds ``, heartbeat 2 s ago``)."""
        if self.pid is None and self.host is None:
            return "the holder is not named in the lock file"
        text = f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'}"
        if self.since is not None:
            age = max(0.0, (_now() - self.since).total_seconds())
            text += f", since {self.since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_ago(age)})"
        if self.beat is not None:
            text += f", heartbeat {_ago(max(0.0, (_now() - self.beat).total_seconds()))}"
        alive = self.alive()
        if alive is None:
            return text + "; another host, so whether it is alive cannot be checked from here"
        return text + (", still running" if alive else ", no longer running")


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


# -- which lock a folder gets ---------------------------------------------------------------


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def filesystem_of(folder: Path, mountinfo: str | None = None) -> tuple[str, frozenset[str]] | None:
    """(filesystem type, mount and superblock options) of the mount holding ``folder``,
    from ``/proc/self/mountinfo`` (or the text given); None where that cannot be read."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    path = os.path.realpath(folder)
    best: tuple[int, str, frozenset[str]] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if not inside or (best is not None and len(point) < best[0]):
            continue  # a later mount over the same point shadows an earlier one
        supers = fields[sep + 3].split(",") if sep + 3 < len(fields) else []
        options = fields[5].split(",") + supers
        best = (len(point), fields[sep + 1], frozenset(options))
    return None if best is None else (best[1], best[2])


def _local_only(fstype: str, options: frozenset[str]) -> str | None:
    """Why flock on this filesystem would not hold across machines, or None if it does
    (or the filesystem is local to this machine anyway)."""
    if fstype in ("nfs", "nfs4"):
        if "nolock" in options:
            return f"{fstype} mounted nolock: flock holds on one node only"
        if "local_lock=flock" in options or "local_lock=all" in options:
            return f"{fstype} mounted local_lock: flock holds on one node only"
        return None
    if fstype == "lustre":
        if "flock" in options:
            return None
        return "Lustre mounted without -o flock: flock is refused or holds on one node only"
    if fstype == "beegfs":
        return "BeeGFS: flock holds on one node unless the client enables global locks"
    if fstype in ("cifs", "smb3") and "nobrl" in options:
        return f"{fstype} mounted nobrl: locks hold on one node only"
    if fstype.startswith("fuse") and fstype != "fuseblk":
        return f"{fstype}: flock on FUSE is often the kernel's, on one node only"
    return None


def lock_mode(
    folder: Path, env: Mapping[str, str] | None = None, mountinfo: str | None = None
) -> tuple[Mode, str]:
    """("flock" or "file", why) for ``folder``: ``RUNNER_LOCK`` if set to one of them,
    else "file" where :func:`filesystem_of` finds a filesystem whose flock does not hold
    across machines. A value other than auto, flock or file is exit 2."""
    asked = _asked_mode(env)
    if asked == "flock":
        return "flock", f"{MODE_ENV}=flock"
    if asked == "file":
        return "file", f"{MODE_ENV}=file"
    found = filesystem_of(folder, mountinfo)
    if found is None:
        return "flock", "the filesystem type is unknown"
    why = _local_only(*found)
    return ("file", why) if why else ("flock", f"{found[0]}: flock holds")


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse (exit 2) a ``RUNNER_LOCK`` or ``RUNNER_LOCK_STALE`` that no run could use,
    in every mode (``--dry-run`` and ``--status`` too, which take no lock)."""
    _asked_mode(env)
    stale_limit(env)


def _asked_mode(env: Mapping[str, str] | None) -> str:
    """``RUNNER_LOCK``: auto (also when unset), flock or file; anything else is exit 2."""
    raw = (os.environ if env is None else env).get(MODE_ENV, "")
    asked = raw.strip().lower() or "auto"
    if asked not in ("auto", "flock", "file"):
        raise ManifestError(f"{raw!r}: must be auto, flock or file", MODE_ENV)
    return asked


def stale_limit(env: Mapping[str, str] | None = None) -> float:
    """``RUNNER_LOCK_STALE`` in seconds (default 60); a bad value is exit 2."""
    raw = (os.environ if env is None else env).get(STALE_ENV, "").strip()
    if not raw:
        return DEFAULT_STALE_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 86400.0:
        raise ManifestError(f"{raw!r}: must be seconds, from 1 to 86400", STALE_ENV)
    return value


def _stale(holder: Holder | None, mtime: float | None, stale_s: float) -> str | None:
    """Why a lock file (naming ``holder``, last written at ``mtime``) may be taken over,
    or None while it holds."""
    if holder is None:
        if mtime is not None and time.time() - mtime > stale_s:
            return f"it names no holder and was last written {_ago(time.time() - mtime)}"
        return None
    if holder.alive() is False:
        return "its process on this host has ended"
    if (
        holder.token is not None
        and holder.token not in _HELD
        and holder.pid == os.getpid()
        and holder.host == socket.gethostname()
    ):
        return "it names this very process, so an earlier one of this host (a restart)"
    if holder.beat is not None:
        age = (_now() - holder.beat).total_seconds()
        if age > stale_s:
            return f"its heartbeat stopped {_ago(age)} (the limit is {stale_s:.0f} s)"
    return None


# -- the lock -------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, float] | None:
    """The file's bytes and mtime; None when it does not exist."""
    try:
        with path.open("rb") as f:
            return f.read(), os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None


class FolderLock:
    """The exclusive right to run in one output folder, for one process.

    :meth:`acquire` raises :class:`~runner.errors.LockedError` naming the holder when
    another run has it. ``mode`` forces the kind of lock (else ``RUNNER_LOCK`` and the
    filesystem decide, :func:`lock_mode`); ``stale_s`` the file lock's stale limit (else
    ``RUNNER_LOCK_STALE``). With a file lock, ``on_lost`` (set before or after
    :meth:`acquire`) is called once, from the heartbeat thread, with the error to stop
    with if another run takes the lock over.
    """

    def __init__(
        self,
        folder: Path,
        *,
        mode: Mode | None = None,
        stale_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.excl = folder / EXCL_NAME
        self._env = os.environ if env is None else env
        self._asked = mode
        self.stale_s = stale_limit(self._env) if stale_s is None else stale_s
        self.mode: Mode | None = None  # once acquired
        self.on_lost: Callable[[LockedError], object] | None = None
        self._fd: int | None = None
        self._token = secrets.token_hex(8)
        self._since: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        mode, why = (self._asked, "asked") if self._asked else lock_mode(self.folder, self._env)
        if mode == "flock":
            if self._acquire_flock():
                self.mode = "flock"
                return
            why = "this filesystem refuses flock"
        self._acquire_file()
        self.mode = "file"
        _HELD.add(self._token)
        log.info(
            "output folder lock: the file %s with a heartbeat every %g s (%s)",
            self.excl,
            beat_interval(self.stale_s),
            why,
        )
        self._thread = threading.Thread(target=self._beat_loop, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a later holder writes its own name anyway
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            _HELD.discard(self._token)
            with contextlib.suppress(OSError):
                if self._mine(self.excl):  # never remove a lock that is not ours
                    self.excl.unlink()

    # -- flock ------------------------------------------------------------------------------

    def _acquire_flock(self) -> bool:
        """Take the flock; False when this filesystem has none (use the file lock)."""
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
        # A run holding the folder by the file lock (RUNNER_LOCK=file) holds it too.
        held = self._live_file_holder()
        if held is not None:
            os.close(fd)
            raise self._locked(held, self.excl)
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

    def _live_file_holder(self) -> Holder | None:
        seen = _read(self.excl)
        if seen is None:
            return None
        holder = Holder.parse(seen[0])
        if _stale(holder, seen[1], self.stale_s) is not None:
            return None
        return holder or Holder(None, None, None)

    # -- the file lock ----------------------------------------------------------------------

    def _content(self) -> bytes:
        return Holder.me(self._token, self._since).to_json()

    def _mine(self, path: Path) -> bool:
        seen = _read(path)
        holder = Holder.parse(seen[0]) if seen else None
        return holder is not None and holder.token == self._token

    def _create(self, path: Path, data: bytes) -> bool:
        """Create ``path`` holding ``data`` if it does not exist, atomically; False if it
        does. A hard link of a complete temporary file: no reader sees it half written,
        and link() is atomic on NFS too (where a retransmitted link can answer EEXIST
        after it succeeded: the temporary file's link count tells)."""
        tmp = path.with_name(f"{path.name}.{self._token}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2
        except OSError as exc:  # no hard links here: O_EXCL, then the content
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _replace(self, path: Path, data: bytes) -> None:
        """Put ``data`` in ``path`` at once (rename over it): readers see the old or the new."""
        tmp = path.with_name(f"{path.name}.{self._token}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _acquire_file(self) -> None:
        # Held by flock (a run with RUNNER_LOCK=flock, or on a filesystem judged local)?
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._named_holder(lambda: os.pread(fd, 4096, 0))
                raise self._locked(holder, self.path) from None
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
            finally:
                os.close(fd)  # and with it the probe's lock
        self._since = _now().replace(microsecond=0)
        for turn in range(8):  # each turn lost a race to a run that took or freed the file
            mine = self._content()
            if self._create(self.excl, mine):
                return
            seen = _read(self.excl)
            if seen is None:
                continue  # released meanwhile
            holder = Holder.parse(seen[0])
            for _ in range(_NAME_TRIES):  # created without a hard link: not written yet
                if holder is not None or seen is None or time.time() - seen[1] > 1:
                    break
                time.sleep(_NAME_WAIT_S)
                seen = _read(self.excl)
                holder = Holder.parse(seen[0]) if seen else None
            if seen is None:
                continue
            why = _stale(holder, seen[1], self.stale_s)
            if why is None:
                raise self._locked(holder, self.excl)
            if self._take_over(seen[0], why, holder):
                return
            time.sleep(0.05 * (turn + 1))
        raise LockedError(f"cannot take the lock {self.excl}: other runs keep taking it; try again")

    def _take_over(self, seen: bytes, why: str, holder: Holder | None) -> bool:
        """Replace the stale lock file, still holding ``seen``, by ours; False if another
        run is taking it over, or it changed meanwhile (judge it again)."""
        claim = self.folder / TAKEOVER_NAME
        if not self._create(claim, self._content()):
            other = _read(claim)
            if other is not None:
                if _stale(Holder.parse(other[0]), other[1], self.stale_s) is None:
                    return False  # another run is taking over: let it finish
                self._remove_if(claim, other[0])  # left by a run killed while taking over
            return False
        try:
            now = _read(self.excl)
            if now is None or now[0] != seen:
                return False
            who = holder.describe() if holder else "the holder is not named in the lock file"
            log.warning("taking over the lock %s: %s (%s)", self.excl, why, who)
            self._replace(self.excl, self._content())
            return True
        finally:
            with contextlib.suppress(OSError):
                if self._mine(claim):
                    claim.unlink()

    def _remove_if(self, path: Path, seen: bytes) -> None:
        """Remove ``path`` if it still holds ``seen``. A rename first, then a look: two
        runs removing at once must not remove a fresh file that replaced it; one that is
        not ``seen`` is linked back (unless another was created meanwhile)."""
        grave = path.with_name(f"{path.name}.stale-{self._token}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        try:
            if grave.read_bytes() != seen:
                with contextlib.suppress(FileExistsError):
                    os.link(grave, path)
        finally:
            grave.unlink(missing_ok=True)

    # -- the heartbeat ----------------------------------------------------------------------

    def _beat_loop(self) -> None:
        interval = beat_interval(self.stale_s)
        failing = 0
        unreadable = 0
        while not self._stop.wait(interval):
            try:
                lost = self._beat()
            except OSError as exc:
                failing += 1
                if failing == 1:
                    log.warning("cannot refresh the lock %s: %s; trying again", self.excl, exc)
                continue
            if failing:
                log.info("the lock %s is refreshed again", self.excl)
                failing = 0
            if lost is False:  # unreadable: being rewritten? look again, up to a limit
                unreadable += 1
                if unreadable * interval <= self.stale_s:
                    continue
                lost = LockLostError(f"the lock file {self.excl} no longer names this run")
            if isinstance(lost, LockedError):
                if self.on_lost is not None:
                    self.on_lost(lost)
                return
            unreadable = 0

    def _beat(self) -> LockedError | bool | None:
        """Rewrite our lock file with a fresh beat: None; the error to stop with when
        another run holds it now; False when it cannot be read."""
        seen = _read(self.excl)
        if seen is None:  # removed by hand: take it back unless another run has
            if self._create(self.excl, self._content()):
                log.warning("the lock file %s was removed while this run held it", self.excl)
                return None
            seen = _read(self.excl)
            if seen is None:
                return False
        holder = Holder.parse(seen[0])
        if holder is None:
            return False
        if holder.token == self._token:
            self._replace(self.excl, self._content())
            return None
        return LockLostError(
            f"another run took over the lock on {self.folder}: {holder.describe()}. This "
            f"run's heartbeat had stopped for more than {self.stale_s:.0f} s (the process "
            "or its machine was frozen, or the volume unreachable), so that run judged it "
            "dead. This run stops at once and leaves the folder to it; what this run did "
            "is in the ledger"
        )

    # -- the message ------------------------------------------------------------------------

    def _locked(self, holder: Holder | None, path: Path) -> LockedError:
        who = holder.describe() if holder else "the holder is not named in the lock file"
        advice = "wait for it to finish, or stop it"
        if holder is not None and holder.pid is not None and holder.alive():
            advice += f" (kill {holder.pid})"
        if path.name != EXCL_NAME:
            advice += "; a run that was killed releases the lock by itself"
        elif holder is not None and holder.beat is not None:
            advice += (
                f"; a run killed on any machine leaves {path} behind, and the next run "
                f"takes it over once its heartbeat is {self.stale_s:.0f} s old"
            )
        elif holder is None or holder.alive() is None:
            advice += (
                f"; this lock file has no heartbeat, so a run killed elsewhere leaves {path} "
                "behind: delete it once sure no run uses the folder"
            )
        else:
            advice += "; a run killed on this host leaves a lock the next run takes over"
        return LockedError(f"another run holds the lock on {self.folder}: {who}; {advice}")


def held_by(folder: Path) -> str | None:
    """What the lock files say of the live run holding ``folder``, or None when no run
    holds it. The flock is probed with a shared, non-blocking ``flock``, released at once:
    it writes nothing, and only a run starting in that very folder at that instant could
    notice it (and would exit 5). A file lock holds while its heartbeat is fresh."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        fd = None
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 4096)
            holder = Holder.parse(raw)
            if holder is not None:
                return holder.describe()
            return " ".join(raw.decode(errors="replace").split()) or "a process"
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
        finally:
            os.close(fd)  # and with it the probe's lock
    try:
        seen = _read(folder / EXCL_NAME)
    except NotADirectoryError:
        return None
    if seen is None:
        return None
    holder = Holder.parse(seen[0])
    if _stale(holder, seen[1], stale_limit()) is not None:
        return None
    return holder.describe() if holder else "a process"
