"""How manifest errors quote a user's values, keys and key paths.

Every :class:`~runner.errors.ManifestError` names a place (``where``) and says what is
allowed. These helpers keep that wording the same in every module that checks a manifest:
a value is shown short (:func:`show`), a key path reads like the manifest
(:func:`format_path`), and a misspelt key gets a suggestion (:func:`unknown_message`).

Owns: the wording. Must not know: which keys exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

__all__ = ["KeyPath", "Where", "format_path", "show", "unknown_message"]

#: A path of keys and list indexes below some root, e.g. ``("jobs", 3, "aspect_ratio")``.
KeyPath = tuple[object, ...]
#: Maps a key path to a place for messages: ``"campaign.yaml:14: jobs[3].aspect_ratio"``.
Where = Callable[[KeyPath], str]


def show(value: object) -> str:
    """A short repr of a user's value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_path(path: KeyPath) -> str:
    """``("jobs", 3, "aspect_ratio")`` -> ``jobs[3].aspect_ratio``."""
    out = ""
    for part in path:
        text = str(part) if len(str(part)) <= 60 else str(part)[:57] + "..."
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{text}"
    return out


def unknown_message(key: object, allowed: Iterable[str], what: str = "key") -> str:
    """``unknown key 'aspct_ratio' (did you mean 'aspect_ratio'?); allowed: ...``."""
    allowed = list(allowed)
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return f"unknown {what} {show(key)}{hint}; allowed: {', '.join(allowed)}"
