"""Thumbnails for ``report.html``: a small WebP copy of each image, made once.

A thumbnail of ``images/hero/0.png`` is ``.thumbs/images/hero/0.png.webp`` in the same
output folder, at most :data:`THUMB_PX` pixels on its longer side. The folder is hidden
so that loading the output folder as a dataset (``imagefolder``) never mistakes the
thumbnails for images, and the report links it relatively, so a copy of the output
folder keeps its thumbnails.

Pillow makes them; it is an optional extra (``pip install 'runner[report]'``): without it
:func:`make_thumbnails` makes none and the report shows the full images, lazy-loaded.
A thumbnail is made again only when its image is newer. Decoding a 4K PNG costs about
half a second of CPU, so one call works for at most ``budget_s`` seconds (on every core:
Pillow releases the GIL while it decodes and resizes) and leaves the rest to the next
report; the jobs shown first are given first. A damaged or unreadable image gets no
thumbnail and no error: the report shows the file as it is.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

try:
    from PIL import Image
except ImportError:  # the optional extra is not installed: the report shows full images
    Image = None  # type: ignore[assignment]

__all__ = ["THUMBS_DIR", "THUMB_PX", "available", "make_thumbnails", "thumb_path"]

log = logging.getLogger("runner.thumbs")

THUMBS_DIR = ".thumbs"
#: the longer side, in pixels: twice the report's 160-pixel cards, sharp on dense screens
THUMB_PX = 320


def available() -> bool:
    """Pillow is installed, so thumbnails can be made."""
    return Image is not None


def thumb_path(rel: str) -> str:
    """The thumbnail of image ``rel`` (relative to the output folder), relative to it too."""
    return f"{THUMBS_DIR}/{rel}.webp"


def _fresh(image: Path, thumb: Path) -> bool:
    try:
        return thumb.stat().st_mtime >= image.stat().st_mtime
    except OSError:
        return False


def _make(out: Path, rel: str) -> bool:
    """Make one thumbnail (to a temporary name, then renamed); False if it cannot be."""
    assert Image is not None
    src, dest = out / rel, out / thumb_path(rel)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a fraction of the size
            im.thumbnail((THUMB_PX, THUMB_PX), reducing_gap=2.0)
            small: Image.Image = im
            if im.mode not in ("RGB", "RGBA"):
                small = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            small.save(tmp, "WEBP", quality=80, method=4)
        os.replace(tmp, dest)
        return True
    except Exception as exc:  # any damaged file: no thumbnail, the report shows the file
        log.debug("no thumbnail for %s: %s", rel, exc)
        tmp.unlink(missing_ok=True)
        return False


def make_thumbnails(out: Path, images: Iterable[str], budget_s: float) -> set[str]:
    """Make the missing or stale thumbnails of ``images`` (paths relative to ``out``, in
    the order they matter), working at most about ``budget_s`` seconds; return the images
    that have a fresh thumbnail now."""
    have: set[str] = set()
    todo: list[str] = []
    for rel in images:
        if _fresh(out / rel, out / thumb_path(rel)):
            have.add(rel)
        else:
            todo.append(rel)
    if not todo or budget_s <= 0:
        return have
    if Image is None:
        log.info(
            "report: %d images shown full size: thumbnails need Pillow "
            "(pip install 'runner[report]')",
            len(todo),
        )
        return have
    deadline = time.monotonic() + budget_s
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers, "thumbs") as pool:
        pending: dict[concurrent.futures.Future[bool], str] = {}
        queue = iter(todo)
        for rel in queue:
            while len(pending) >= workers * 2:
                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for fut in done:
                    if fut.result():
                        have.add(pending[fut])
                    del pending[fut]
            if time.monotonic() >= deadline:
                break
            pending[pool.submit(_make, out, rel)] = rel
        for fut in concurrent.futures.as_completed(pending):
            if fut.result():
                have.add(pending[fut])
    left = len(todo) - sum(1 for rel in todo if rel in have)
    if left:
        log.info(
            "report: %d thumbnails left for later (%.0f s spent); the report shows those "
            "images full size until --report or the next run makes them",
            left,
            budget_s,
        )
    return have
