"""Deterministic, valid PNG files for the simulator's result URLs.

Contract: ``render_png(task_id, index, size_bytes)`` returns the same bytes for the same
arguments, different bytes for every ``(task_id, index)``, and a well-formed PNG (correct
signature, chunk CRCs and zlib stream) that any decoder opens: a small RGB picture whose
colours and stripes derive from a hash of the arguments. When ``size_bytes`` is larger than
the picture, a private ancillary chunk (``paDd``, ignored by decoders) of pseudo-random but
deterministic bytes pads the file to exactly ``size_bytes``; a smaller ``size_bytes`` gives
the bare picture (about 1 KB).
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIDE = 64  # pixels: big enough to see the pattern, small enough to render in microseconds
# Ancillary (lower), private (lower), reserved bit clear (upper), safe to copy (lower).
_PAD_TYPE = b"paDd"
_CHUNK_OVERHEAD = 12  # length, type, CRC


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _picture(digest: bytes) -> bytes:
    """Raw scanlines of a two-colour diagonal stripe pattern chosen by ``digest``."""
    c1, c2 = digest[0:3], digest[3:6]
    period = 4 + digest[6] % 13
    # Pixel (x, y) takes colour ((x + y) // period) % 2: row y is a window of one long line.
    line = b"".join(c1 if (i // period) % 2 == 0 else c2 for i in range(2 * _SIDE))
    return b"".join(b"\x00" + line[3 * y : 3 * (y + _SIDE)] for y in range(_SIDE))


@functools.lru_cache(maxsize=256)
def render_png(task_id: str, index: int, size_bytes: int) -> bytes:
    """The PNG served for image ``index`` of ``task_id``, about ``size_bytes`` long.

    Cached (256 most recent) because a client may download the same file several times
    (retries, range requests) and clients poll in bursts.
    """
    digest = hashlib.sha256(f"{task_id}/{index}".encode()).digest()
    ihdr = struct.pack(">IIBBBBB", _SIDE, _SIDE, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(_picture(digest), 6))
    # The hash is also written into a text chunk so two images never share bytes even if
    # their colours happened to collide.
    body += _chunk(b"tEXt", b"Comment\x00apixo-sim " + digest.hex().encode())
    end = _chunk(b"IEND", b"")
    pad = size_bytes - len(_SIGNATURE) - len(body) - len(end) - _CHUNK_OVERHEAD
    if pad > 0:
        filler = random.Random(digest).randbytes(pad)
        body += _chunk(_PAD_TYPE, filler)
    return _SIGNATURE + body + end


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: how task records name their images' content."""
    return hashlib.sha256(data).hexdigest()
