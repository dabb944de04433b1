"""The start-up index's files: ``<folder>/.index/<name>``, each a cache of work that a
start would otherwise repeat (the manifest's checked job table, a ledger's replayed state).

A cache, never a source of truth. Each file carries the key of what it was made from
(the sources' identities, chosen by the caller), the format version, the byte order and
a digest of the code that reads and writes such state (:func:`code_key`: an upgraded
runner never trusts an older runner's file), and a checksum of its payload. A file that
is absent, of another key, cut short or damaged reads as None; one that cannot be written
(a read-only folder, a full disk) is not written. Either way the caller does the work
from the sources, so deleting ``.index/`` changes nothing but the time a start takes.

Layout: one header line (JSON: the key, and the name, type code and length of each
section), then each section's bytes, padded to 8. A file is written under a temporary
name of its own (the process id) and renamed into place, so a reader never sees half of
one and processes that race each write a whole file in turn.

Owns: the file format. Must not know: what the sections mean.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import zlib
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import orjson

__all__ = [
    "INDEX_DIR",
    "Section",
    "code_key",
    "forget_index_file",
    "read_index_file",
    "read_index_header",
    "write_index_file",
]

log = logging.getLogger("runner")

#: the folder, in an output (or shard) folder, that holds the start-up index
INDEX_DIR = ".index"

#: the file format; a file of another version is ignored
FORMAT = 1

_MAGIC = b"runner-index"

#: a section: an array of numbers, or bytes
Section: TypeAlias = "array[int] | bytes"
#: what a section is written from: one, or chunks (arrays of one type code) laid end to end
Chunks: TypeAlias = "array[int] | bytes | Sequence[array[int]]"

#: the packages whose code decides what the cached state is (expansion, fingerprints,
#: replay); a change to any of their files makes every index file stale
_CODE_PACKAGES = ("manifest", "state")

_code_key: str | None = None


def code_key() -> str:
    """A digest of the runner's own code that shapes cached state (and of this file): the
    index of one version of the code is never read by another."""
    global _code_key
    if _code_key is None:
        root = Path(__file__).parent
        digest = hashlib.sha256(FORMAT.to_bytes(2, "big"))
        files = [Path(__file__)]
        for package in _CODE_PACKAGES:
            files += sorted((root / package).glob("*.py"))
        for path in files:
            digest.update(path.name.encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:  # no source to read: any such install gets its own key
                digest.update(b"?")
        _code_key = digest.hexdigest()[:32]
    return _code_key


def _padding(n: int) -> bytes:
    return b"\0" * (-n % 8)


def _chunks(data: Chunks) -> list[array[int]] | list[bytes]:
    if isinstance(data, bytes):
        return [data]
    if isinstance(data, array):
        return [data]
    return list(data)


def write_index_file(
    folder: Path, name: str, key: Mapping[str, Any], sections: Mapping[str, Chunks]
) -> bool:
    """Write ``<folder>/.index/<name>``: ``key`` and ``sections``. False (and nothing
    written) when the folder does not exist or the file cannot be written."""
    if not folder.is_dir():
        return False
    where = folder / INDEX_DIR
    tmp = where / f".{name}.{os.getpid()}.tmp"
    crc = 0
    layout = []
    for section_name, data in sections.items():
        chunks = _chunks(data)
        codes = {c.typecode if isinstance(c, array) else "b" for c in chunks}
        code = codes.pop() if len(codes) == 1 else ("b" if not codes else "?")
        if code == "?":
            raise ValueError(f"section {section_name} mixes types")
        layout.append([section_name, code, sum(len(c) for c in chunks)])
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
    header = {
        "format": FORMAT,
        "code": code_key(),
        "byteorder": sys.byteorder,
        "key": key,
        "sections": layout,
        "crc": crc,
    }
    try:
        where.mkdir(exist_ok=True)
        with tmp.open("wb") as f:
            f.write(_MAGIC + b" " + orjson.dumps(header) + b"\n")
            for data in sections.values():
                size = 0
                for chunk in _chunks(data):
                    f.write(chunk)
                    size += memoryview(chunk).nbytes
                f.write(_padding(size))
        os.replace(tmp, where / name)
    except OSError as exc:
        log.debug("start-up index: cannot write %s: %s", where / name, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def read_index_file(folder: Path, name: str, key: Mapping[str, Any]) -> dict[str, Section] | None:
    """The sections of ``<folder>/.index/<name>`` if it was written for ``key`` by this
    code and reads back whole; else None."""
    header, f = _open(folder / INDEX_DIR / name)
    if header is None or f is None:
        return None
    with f:
        if header.get("key") != key:
            return None
        return _sections(f, header)


def read_index_header(folder: Path, name: str) -> dict[str, Any] | None:
    """The key of ``<folder>/.index/<name>``, for a caller that checks it against its
    sources itself before it reads the sections (:func:`read_index_file` with that key);
    None if there is no such file of this code."""
    header, f = _open(folder / INDEX_DIR / name)
    if header is None or f is None:
        return None
    f.close()
    key = header.get("key")
    return key if isinstance(key, dict) else None


def forget_index_file(folder: Path, name: str) -> None:
    """Remove ``<folder>/.index/<name>`` (its sources were rewritten), if there is one."""
    with contextlib.suppress(OSError):
        (folder / INDEX_DIR / name).unlink()


def _open(path: Path) -> tuple[dict[str, Any] | None, Any]:
    try:
        f = path.open("rb")
    except OSError:
        return None, None
    try:
        first = f.readline(1 << 20)
        magic, _, text = first.partition(b" ")
        header = orjson.loads(text) if magic == _MAGIC and first.endswith(b"\n") else None
    except (OSError, orjson.JSONDecodeError):
        header = None
    ok = (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and header.get("code") == code_key()
        and header.get("byteorder") == sys.byteorder
        and isinstance(header.get("sections"), list)
    )
    if not ok:
        f.close()
        return None, None
    assert isinstance(header, dict)
    return header, f


def _sections(f: Any, header: dict[str, Any]) -> dict[str, Section] | None:
    """Read every section straight into its array (no second copy), checking lengths and
    the checksum."""
    out: dict[str, Section] = {}
    crc = 0
    try:
        for section_name, code, length in header["sections"]:
            if code == "b":
                data: Section = f.read(length)
                if len(data) != length:
                    return None
            else:
                data = array(code, [0]) * length
                view = memoryview(data).cast("B")
                if f.readinto(view) != view.nbytes:
                    return None
            crc = zlib.crc32(data, crc)
            pad = -memoryview(data).nbytes % 8
            if f.read(pad) != b"\0" * pad:
                return None
            out[str(section_name)] = data
        if f.read(1) or crc != header.get("crc"):
            return None
    except (OSError, ValueError, TypeError):
        return None
    return out
