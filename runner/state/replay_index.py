"""A ledger's replayed state, kept in the start-up index so that a start replays only
what was appended since.

``<folder>/.index/ledger.bin`` (:mod:`runner.indexfile`) holds the state replay reached
(:meth:`~runner.state.index.LedgerIndex.saved`: the packed done map and every full record)
at a line boundary ``offset`` of one ledger file, and what it counted up to there (lines,
unreadable lines). Its key is that file's identity: device and inode (compaction renames
a new file over the ledger), ``offset``, and a sha256 of samples of the bytes before
``offset``: the first and last 64 KiB and 16 blocks of 4 KiB spread between. The ledger is
append-only between compactions, so while those bytes are unchanged the state at
``offset`` is the state a replay of them would reach, and replay goes on from there
(:func:`resume`). A torn last line lies beyond ``offset`` (it is not a whole line): it is
read, and ignored, as before. Compaction forgets the file (:func:`forget`); the run that
compacted then replays the new ledger and keeps it.

:func:`keep` writes the state after a replay that read a ledger with no index, or at least
:data:`KEEP_AFTER_BYTES` past the one it had, so a ledger growing by a few lines between
two ``--status`` is not rewritten each time.

Owns: when the state is kept, and whether a kept one fits a ledger. Must not know: what
events mean (:mod:`runner.state.index`), the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

import orjson

from runner.indexfile import (
    forget_index_file,
    read_index_file,
    read_index_header,
    write_index_file,
)

from .index import LedgerIndex

__all__ = ["KEEP_AFTER_BYTES", "REPLAY_NAME", "forget", "keep", "resume"]

log = logging.getLogger("runner")

#: the index file of a folder's ledger
REPLAY_NAME = "ledger.bin"

#: a replay that read this many bytes beyond the kept state keeps its own
KEEP_AFTER_BYTES = 1 << 20

_EDGE = 1 << 16
_BLOCK = 1 << 12
_BLOCKS = 16


def _identity(fd: int, offset: int) -> dict[str, int | str]:
    """The key of the ledger open as ``fd`` up to ``offset``."""
    info = os.fstat(fd)
    digest = hashlib.sha256(offset.to_bytes(8, "big"))
    spans = [(0, min(offset, _EDGE)), (max(0, offset - _EDGE), offset)]
    step = offset // (_BLOCKS + 1)
    spans += [(step * i, min(offset, step * i + _BLOCK)) for i in range(1, _BLOCKS + 1)]
    for start, end in spans:
        if end > start:
            digest.update(os.pread(fd, end - start, start))
    return {
        "dev": info.st_dev,
        "ino": info.st_ino,
        "offset": offset,
        "sample": digest.hexdigest(),
    }


def resume(f: BinaryIO, index: LedgerIndex) -> tuple[int, int, int]:
    """Fill the empty ``index`` with the state kept for the ledger open as ``f`` if it
    fits that file; return (the offset replay goes on from, lines and unreadable lines
    before it); (0, 0, 0) and ``index`` untouched when none fits."""
    folder = Path(index.path).parent
    key = read_index_header(folder, REPLAY_NAME)
    if key is None:
        return 0, 0, 0
    fd = f.fileno()
    try:
        offset = int(key["offset"])
        info = os.fstat(fd)
        fits = (
            0 < offset <= info.st_size
            and (key.get("dev"), key.get("ino")) == (info.st_dev, info.st_ino)
            and key == _identity(fd, offset)
        )
    except (KeyError, TypeError, ValueError, OSError):
        fits = False
    sections = read_index_file(folder, REPLAY_NAME, key) if fits else None
    if sections is None:
        log.debug("start-up index: no kept state fits %s; replaying it whole", index.path)
        return 0, 0, 0
    try:
        numbers = orjson.loads(bytes(sections.pop("numbers")))
        lines, corrupt = int(numbers["lines"]), int(numbers["corrupt"])
        index.restore(numbers, sections)
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        log.debug("start-up index: the kept state of %s is damaged; replaying it whole", index.path)
        return 0, 0, 0
    log.debug(
        "start-up index: the state of %s read up to byte %d (%d lines); replaying from there",
        index.path,
        offset,
        lines,
    )
    return offset, lines, corrupt


def keep(
    f: BinaryIO, index: LedgerIndex, offset: int, lines: int, corrupt: int, since: int
) -> None:
    """Keep ``index``, the state of the ledger open as ``f`` up to ``offset`` (``lines``
    and ``corrupt`` counted before it), when worth it: replay started from ``since`` (0:
    no kept state fitted)."""
    if offset == 0 or (since and offset - since < KEEP_AFTER_BYTES):
        return
    numbers, sections = index.saved()
    numbers.update(lines=lines, corrupt=corrupt)
    folder = Path(index.path).parent
    try:
        key = _identity(f.fileno(), offset)
        body = {"numbers": orjson.dumps(numbers), **sections}
    except (OSError, orjson.JSONEncodeError):
        return
    if write_index_file(folder, REPLAY_NAME, key, body):
        log.debug("start-up index: the state of %s up to byte %d kept", index.path, offset)


def forget(ledger: Path) -> None:
    """The ledger at ``ledger`` was rewritten: its kept state no longer applies."""
    forget_index_file(ledger.parent, REPLAY_NAME)
