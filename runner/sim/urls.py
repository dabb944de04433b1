"""Signed result URLs: handed out with a lifetime, checked on every download.

Contract: :meth:`UrlSigner.issue` gives, for each image of a task,
``{origin}/files/{task_id}/{index}.png?exp={unix_ms}&sig={hmac}``, valid until ``exp``
(Unix **milliseconds**, so a lifetime of a few simulated milliseconds is honoured).
:meth:`UrlSigner.verify` says whether ``exp`` and ``sig`` were issued by this signer for
that image; whether ``exp`` has passed is the caller's business (410, not 404). The secret
is random per signer unless given, which is how a state folder keeps the URLs of a previous
server process valid.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


class UrlSigner:
    """HMAC-SHA256 signatures of ``task_id/index/exp`` under one secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret if secret is not None else secrets.token_bytes(16)

    def _sign(self, task_id: str, index: int, exp_ms: int) -> str:
        msg = f"{task_id}/{index}/{exp_ms}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, origin: str, task_id: str, n_images: int, exp_ms: int) -> list[str]:
        """The URLs of images ``0 .. n_images - 1`` of ``task_id``, valid until ``exp_ms``."""
        base = f"{origin}/files/{task_id}"
        return [
            f"{base}/{i}.png?exp={exp_ms}&sig={self._sign(task_id, i, exp_ms)}"
            for i in range(n_images)
        ]

    def verify(self, task_id: str, index: int, exp: str, sig: str) -> int | None:
        """``exp`` as an int if ``exp`` and ``sig`` are genuine for this image, else None."""
        if not exp.isdigit() or len(exp) > 20:
            return None
        exp_ms = int(exp)
        if not hmac.compare_digest(sig, self._sign(task_id, index, exp_ms)):
            return None
        return exp_ms
