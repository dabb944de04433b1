"""The simulated API's front door: answers in the documented envelope, and the gate every
API request passes before a handler may act.

The gate decides, in this order and before any side effect: connection reset
(``p_reset``), slow answer (``p_slow``), authentication (401, not counted in any window),
the per-key sliding request window (429; rejected requests count too), injected 429 and
5xx, and the model in the path (404).
"""

from __future__ import annotations

import asyncio
import hmac
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from runner.sim.config import SimConfig
from runner.sim.limits import Limits
from runner.sim.stats import SimStats
from runner.sim.store import key_fingerprint
from runner.sim.tasks import LENIENT_MODELS, STRICT_MODEL

__all__ = ["FIVE_XX", "MESSAGES", "Gate", "envelope"]

MESSAGES = {
    200: "success",
    400: "invalid parameters",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}
FIVE_XX = (500, 502, 503, 504)


def envelope(status: int, data: dict[str, Any], message: str | None = None) -> bytes:
    """The documented JSON envelope; ``code`` mirrors the HTTP status."""
    return orjson.dumps({"code": status, "message": message or MESSAGES[status], "data": data})


class Gate:
    """Answers and admission for one server; ``config`` is a getter (the server's config
    object is mutable and read per request)."""

    def __init__(
        self,
        config: Callable[[], SimConfig],
        stats: SimStats,
        limits: Limits,
        rng: random.Random,
    ) -> None:
        self._config = config
        self.stats = stats
        self._limits = limits
        self._rng = rng

    def answer(
        self,
        endpoint: str,
        status: int,
        data: dict[str, Any],
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        self.stats.requests[endpoint, status] += 1
        return web.Response(
            body=envelope(status, data, message),
            status=status,
            content_type="application/json",
            headers=headers,
        )

    def too_many(self, endpoint: str, reason: str, message: str) -> web.Response:
        headers = {}
        if self._config().send_retry_after:
            headers["Retry-After"] = f"{self._config().retry_after_s:g}"
        return self.answer(endpoint, 429, {"error": reason}, message, headers)

    def reset(self, request: web.Request, endpoint: str) -> web.Response:
        """Drop the connection with a TCP RST and no answer at all."""
        self.stats.requests[endpoint, 0] += 1
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 makes close() send RST: the client sees "connection reset".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=499)  # never sent: the transport is gone

    async def check(self, request: web.Request, endpoint: str) -> tuple[str, web.Response | None]:
        """Faults, authentication, the request window and the model in the path.

        Returns (key, early answer or None): with None the request may go on.
        """
        cfg, rng = self._config(), self._rng
        if cfg.p_reset and rng.random() < cfg.p_reset:
            self.stats.faults["reset"] += 1
            return "", self.reset(request, endpoint)
        try:
            # The whole request is in before any answer, slow or not: a client that gives
            # up waiting for a slow answer has still submitted (aiohttp caches the body).
            await request.read()
        except web.HTTPRequestEntityTooLarge:
            return "", self.answer(endpoint, 400, {"error": "body"}, "the body is too large")
        except ConnectionError:
            return "", web.Response(status=499)  # the client left mid-request: nobody to answer
        if cfg.p_slow and rng.random() < cfg.p_slow:
            self.stats.faults["slow"] += 1
            await asyncio.sleep(cfg.slow_s)
        key = self._key(request)
        if key is None:
            return "", self.answer(
                endpoint,
                401,
                {"error": "Authorization"},
                "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
            )
        if self._limits.hit(key, time.monotonic(), cfg.rate, cfg.rate_period_s):
            msg = f"rate limit: at most {cfg.rate} requests per {cfg.rate_period_s:g} s"
            return key, self.too_many(endpoint, "rate_limit", msg)
        if cfg.p_429 and rng.random() < cfg.p_429:
            self.stats.faults["429"] += 1
            return key, self.too_many(endpoint, "rate_limit", "rate limit (injected)")
        if cfg.p_5xx and rng.random() < cfg.p_5xx:
            self.stats.faults["5xx"] += 1
            status = rng.choice(FIVE_XX)
            return key, self.answer(endpoint, status, {}, f"{MESSAGES[status]} (injected)")
        model = request.match_info["model"]
        if not self._known_model(model):
            return key, self.answer(endpoint, 404, {"error": "model"}, f"unknown model {model!r}")
        return key, None

    def _key(self, request: web.Request) -> str | None:
        """The fingerprint of the request's accepted Bearer token, or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        expected = self._config().api_key
        if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
            return None
        return key_fingerprint(token)

    @staticmethod
    def _known_model(model: str) -> bool:
        return model == STRICT_MODEL or model in LENIENT_MODELS
