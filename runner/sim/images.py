"""Deterministic, valid PNG files for the simulator's result URLs.

Contract:

* ``render_png(task_id, index, size_bytes, width, height)`` returns the same bytes for the
  same arguments, different bytes for every ``(task_id, index)``, and a well-formed PNG
  (correct signature, chunk CRCs and zlib stream) that any decoder opens: a ``width`` x
  ``height`` RGB picture whose colours and stripes derive from a hash of
  ``task_id/index``. When ``size_bytes`` is larger than the picture, a private ancillary
  chunk (``paDd``, ignored by decoders) of pseudo-random but deterministic bytes pads the
  file to exactly ``size_bytes``; a smaller ``size_bytes`` gives the bare picture.
* :func:`image_shape` gives the picture's size for a submission: the requested
  ``aspect_ratio`` exactly (``16:9`` -> 80 x 45), about 64 x 64 pixels of area at 2K and
  twice the linear size at 4K. :func:`image_size_bytes` gives the file size: the configured
  ``image_bytes`` at 2K, four times that at 4K (four times the pixels).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pixels of a 2K square: big enough to see the pattern, small enough to render in
# microseconds. The real 2K square is 2048 px, so the pictures are 1:32 scale models.
_SIDE = 64
# The aspect ratios the API page lists; anything else (other models) is drawn square.
_RATIOS = {
    r: (int(r.split(":")[0]), int(r.split(":")[1]))
    for r in ("1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9")
}
# Ancillary (lower), private (lower), reserved bit clear (upper), safe to copy (lower).
_PAD_TYPE = b"paDd"
_CHUNK_OVERHEAD = 12  # length, type, CRC


def image_shape(aspect_ratio: object, resolution: str) -> tuple[int, int]:
    """``(width, height)`` in pixels of the images of a task; see the module docstring."""
    w, h = _RATIOS.get(aspect_ratio, (1, 1)) if isinstance(aspect_ratio, str) else (1, 1)
    unit = max(1, round(_SIDE / math.sqrt(w * h)))  # keeps the area near _SIDE squared
    linear = 2 if resolution == "4K" else 1
    return w * unit * linear, h * unit * linear


def image_size_bytes(image_bytes: int, resolution: str) -> int:
    """The file size of one image at ``resolution`` for the ``image_bytes`` knob (2K)."""
    return image_bytes * 4 if resolution == "4K" else image_bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _picture(digest: bytes, width: int, height: int) -> bytes:
    """Raw scanlines of a two-colour diagonal stripe pattern chosen by ``digest``."""
    c1, c2 = digest[0:3], digest[3:6]
    period = 4 + digest[6] % 13
    # Pixel (x, y) takes colour ((x + y) // period) % 2: row y is a window of one long line.
    line = b"".join(c1 if (i // period) % 2 == 0 else c2 for i in range(width + height))
    return b"".join(b"\x00" + line[3 * y : 3 * (y + width)] for y in range(height))


@functools.lru_cache(maxsize=256)
def render_png(
    task_id: str, index: int, size_bytes: int, width: int = _SIDE, height: int = _SIDE
) -> bytes:
    """The PNG served for image ``index`` of ``task_id``, about ``size_bytes`` long.

    Cached (256 most recent) because a client may download the same file several times
    (retries, range requests) and clients poll in bursts.
    """
    digest = hashlib.sha256(f"{task_id}/{index}".encode()).digest()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    picture = _picture(digest, width, height)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(picture, 6))
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
