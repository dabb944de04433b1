"""Tasks of the simulator: validating a submission, drawing its fate, reporting its state.

Contract:

* :func:`parse_submission` enforces every rule of the API page's tables for
  ``seedream-4-5`` and raises :class:`InvalidRequest` naming the first offending field as a
  dotted path (``request_type``, ``input.max_images``, ``input.image_urls[3]``). The other
  models of the provider (:data:`LENIENT_MODELS`) accept any ``input`` object holding a
  non-empty string ``prompt``. Any other model raises :class:`UnknownModel`.
* :func:`new_task` draws everything about a task at submission: how long it stays pending,
  how long it generates (scaled by ``time_scale``, shaped by the duration ``profile``: see
  :func:`generation_factor`), how many images it makes (their shape and file size follow
  ``aspect_ratio`` and ``resolution``) and whether it fails or hangs. Every draw comes from
  the server's one ``rng``, so a ``seed`` replays a run.
  Nothing runs per task afterwards: :meth:`Task.state_at` derives the state from the
  clock, so polling costs O(1) and a thousand live tasks cost no timers.
* Times are real wall-clock Unix milliseconds, so a client's own clock agrees with them,
  and a task saved in a state folder (:mod:`~runner.sim.store`) keeps running while no
  server is up.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from runner.sim.config import (
    DRIFT_FACTOR,
    MIXTURE_FAST_FACTOR,
    MIXTURE_FAST_SHARE,
    MIXTURE_SLOW_FACTOR,
    SLOW_FACTOR,
    STRAGGLER_FACTOR,
    STRAGGLER_SHARE,
    SimConfig,
)
from runner.sim.images import image_shape, image_size_bytes, render_png, sha256_hex

STRICT_MODEL = "seedream-4-5"
LENIENT_MODELS = frozenset({"seedream-5-0", "nano-banana", "flux-2"})

PENDING, PROCESSING, SUCCESS, FAILED = "pending", "processing", "success", "failed"

# The processing class of the API page: what p_fail draws from.
RETRYABLE_FAIL_CODES = ("PROCESSING_TIMEOUT", "MODEL_UNAVAILABLE", "GENERATION_FAILED")
FAIL_MESSAGES = {
    "CONTENT_VIOLATION": "The prompt violates the content policy.",
    "NSFW_DETECTED": "The generated image was flagged as NSFW.",
    "PROMPT_TOO_LONG": "The prompt is too long for this model.",
    "INVALID_PROMPT": "The prompt could not be understood.",
    "INVALID_IMAGE_URL": "A reference image URL is invalid.",
    "IMAGE_TOO_LARGE": "A reference image is larger than 10 MB.",
    "UNSUPPORTED_FORMAT": "A reference image is not JPG, PNG or WebP.",
    "IMAGE_DOWNLOAD_FAILED": "A reference image could not be downloaded.",
    "PROCESSING_TIMEOUT": "Processing timed out.",
    "MODEL_UNAVAILABLE": "The model is temporarily unavailable.",
    "GENERATION_FAILED": "Image generation failed.",
    "INSUFFICIENT_CREDITS": "Insufficient credits to complete the task.",
}
_FAIL_MARK = re.compile(r"\[fail:([A-Za-z0-9_]+)\]")

_TOP_FIELDS = ("request_type", "callback_url", "provider", "input")
_INPUT_FIELDS = (
    "mode",
    "prompt",
    "image_urls",
    "max_images",
    "resolution",
    "aspect_ratio",
    "sequential_image_generation",
)
_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9")
_IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
# Plain-http webhooks are accepted for these hosts only, so tests and local development
# can receive them; the API page requires public HTTPS.
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_PROMPT_CHARS = 5000
MAX_IMAGE_URLS = 14
MAX_IMAGES = 10


class UnknownModel(Exception):
    """The model in the path is not one the simulator knows: answer 404."""


class InvalidRequest(Exception):
    """A submission breaks a rule: answer 400 with ``field`` in ``data.error``."""

    def __init__(self, field_path: str, reason: str) -> None:
        self.field = field_path
        self.reason = reason
        super().__init__(f"{field_path}: {reason}")


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated submission, normalised with the documented defaults."""

    model: str
    request_type: str
    callback_url: str | None
    provider: str
    input: dict[str, Any]
    prompt: str
    max_images: int
    resolution: str
    sequential: bool


@dataclass(slots=True)
class Task:
    """One task's record. Its fate is fixed at creation; its state follows the clock."""

    task_id: str
    key: str  # a fingerprint of the Bearer token that submitted it, never the token itself
    # scheme://host:port the client submitted to: where its webhook's result URLs point
    # (status answers build them from the origin the status request reached). Empty for a
    # task loaded from a state folder.
    origin: str
    submission: Submission
    create_ms: int
    processing_ms: int  # when it leaves pending
    complete_ms: int  # when it reaches its terminal state (never, if stuck)
    n_images: int
    image_bytes: int  # the size of each of its files (the knob's value, 4x at 4K)
    fail_code: str | None = None
    fail_msg: str | None = None
    stuck: bool = False
    # Set by the server, which holds the signing key and the URL lifetime.
    url_signer: Callable[[Task], list[str]] | None = field(default=None, repr=False)
    # Status requests that reached this task in this server process (bad_status_first).
    status_requests: int = field(default=0, repr=False)
    _sha256: list[str] | None = field(default=None, repr=False)

    @property
    def input(self) -> dict[str, Any]:
        """The ``input`` object as submitted."""
        return self.submission.input

    @property
    def state(self) -> str:
        """The state right now."""
        return self.state_at(time.time() * 1000)

    @property
    def makes_images(self) -> bool:
        """Whether the task ends in success (its images exist), sooner or later."""
        return not self.fail_code and not self.stuck

    @property
    def shape(self) -> tuple[int, int]:
        """``(width, height)`` of its images: the requested aspect ratio and resolution."""
        return image_shape(self.input.get("aspect_ratio"), self.submission.resolution)

    def png(self, index: int) -> bytes:
        """The bytes of image ``index`` (deterministic: nothing is stored)."""
        return render_png(self.task_id, index, self.image_bytes, *self.shape)

    @property
    def result_urls(self) -> list[str]:
        """Signed URLs of its images, valid ``url_ttl_s`` from now; 404 until it succeeds."""
        if self.url_signer is None or not self.makes_images:
            return []
        return self.url_signer(self)

    @property
    def cost_ms(self) -> int:
        """Generation time in milliseconds: what ``costTime`` reports."""
        return self.complete_ms - self.processing_ms

    @property
    def sha256(self) -> list[str]:
        """Hex SHA-256 of each result image, in result-URL order (none if it never succeeds)."""
        if self._sha256 is None:
            count = self.n_images if self.makes_images else 0
            self._sha256 = [sha256_hex(self.png(i)) for i in range(count)]
        return self._sha256

    def gone_at(self, now_ms: float, retention_ms: float) -> bool:
        """Whether it finished ``retention_ms`` or more before ``now_ms``: forgotten then."""
        if self.state_at(now_ms) in (PENDING, PROCESSING):
            return False
        return now_ms >= self.complete_ms + retention_ms

    def state_at(self, now_ms: float) -> str:
        if now_ms < self.processing_ms:
            return PENDING
        if self.stuck or now_ms < self.complete_ms:
            return PROCESSING
        return FAILED if self.fail_code else SUCCESS

    def status_data(self, state: str, result_urls: list[str]) -> dict[str, Any]:
        """The ``data`` object of a status answer (and of a webhook) in ``state``."""
        data: dict[str, Any] = {
            "taskId": self.task_id,
            "state": state,
            "createTime": self.create_ms,
        }
        if state in (SUCCESS, FAILED):
            data["completeTime"] = self.complete_ms
            data["costTime"] = self.cost_ms
        if state == SUCCESS:
            # A JSON string, as documented: clients must parse it a second time.
            data["resultJson"] = orjson.dumps({"resultUrls": result_urls}).decode()
        elif state == FAILED:
            data["failCode"] = self.fail_code
            data["failMsg"] = self.fail_msg
        return data


def _choice(path: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(path, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _url(path: str, value: Any, *, webhook: bool) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise InvalidRequest(path, f"must be an absolute URL; got {value!r}")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise InvalidRequest(path, f"is not a valid URL: {value!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(path, f"must be an http(s) URL with a host; got {value!r}")
    if webhook and parts.scheme != "https" and host not in _LOCAL_HOSTS:
        raise InvalidRequest(path, "must be a public https URL (http only for localhost)")
    if not webhook:
        last = parts.path.rsplit("/", 1)[-1]
        if "." in last and last.rsplit(".", 1)[1].lower() not in _IMAGE_EXTENSIONS:
            raise InvalidRequest(path, f"must be a JPG, PNG or WebP image; got {value!r}")
    return value


def _envelope_fields(body: Any) -> tuple[str, str | None, str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    for name in body:
        if name not in _TOP_FIELDS:
            raise InvalidRequest(name, f"unknown field; allowed: {', '.join(_TOP_FIELDS)}")
    request_type = _choice("request_type", body.get("request_type", "async"), ("async", "callback"))
    callback_url = body.get("callback_url")
    if callback_url is not None or request_type == "callback":
        if callback_url is None:
            raise InvalidRequest("callback_url", "is required when request_type is callback")
        callback_url = _url("callback_url", callback_url, webhook=True)
    provider = _choice("provider", body.get("provider", "auto"), ("auto", "value", "official"))
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise InvalidRequest("input", "is required and must be an object")
    return request_type, callback_url, provider, inp


def _prompt(value: Any, limit: int | None) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("input.prompt", "is required: a non-empty string")
    if limit is not None and len(value) > limit:
        raise InvalidRequest("input.prompt", f"is {len(value)} characters; at most {limit}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_submission(model: str, body: Any) -> Submission:
    """Validate a submission body for ``model``; see the module docstring."""
    if model != STRICT_MODEL and model not in LENIENT_MODELS:
        raise UnknownModel(model)
    request_type, callback_url, provider, inp = _envelope_fields(body)
    read_input = _lenient_input if model in LENIENT_MODELS else _strict_input
    prompt, max_images, resolution, sequential = read_input(inp)
    return Submission(
        model=model,
        request_type=request_type,
        callback_url=callback_url,
        provider=provider,
        input=inp,
        prompt=prompt,
        max_images=max_images,
        resolution=resolution,
        sequential=sequential,
    )


# What a submission's ``input`` decides: prompt, max_images, resolution, sequential.
_InputFields = tuple[str, int, str, bool]


def _lenient_input(inp: dict[str, Any]) -> _InputFields:
    """The other models: a prompt is required; anything else off the table takes a default."""
    prompt = _prompt(inp.get("prompt"), None)
    n = inp.get("max_images", 1)
    return (
        prompt,
        n if _is_int(n) and 1 <= n <= MAX_IMAGES else 1,
        "4K" if inp.get("resolution") == "4K" else "2K",
        inp.get("sequential_image_generation") == "auto",
    )


def _strict_input(inp: dict[str, Any]) -> _InputFields:
    """``seedream-4-5``: every rule of the API page's input table."""
    for name in inp:
        if name not in _INPUT_FIELDS:
            raise InvalidRequest(f"input.{name}", f"unknown field for {STRICT_MODEL}")
    mode = _choice(
        "input.mode", inp.get("mode", "text-to-image"), ("text-to-image", "image-to-image")
    )
    prompt = _prompt(inp.get("prompt"), MAX_PROMPT_CHARS)
    urls = inp.get("image_urls")
    if urls is None and mode == "image-to-image":
        raise InvalidRequest("input.image_urls", "is required for image-to-image")
    if urls is not None:
        if not isinstance(urls, list):
            raise InvalidRequest("input.image_urls", "must be a list of URLs")
        if len(urls) > MAX_IMAGE_URLS or (mode == "image-to-image" and not urls):
            raise InvalidRequest(
                "input.image_urls", f"has {len(urls)} URLs; 1 to {MAX_IMAGE_URLS} allowed"
            )
        for i, u in enumerate(urls):
            _url(f"input.image_urls[{i}]", u, webhook=False)
    if "max_images" not in inp:
        raise InvalidRequest("input.max_images", f"is required: an integer 1-{MAX_IMAGES}")
    n = inp["max_images"]
    if not _is_int(n) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest("input.max_images", f"must be an integer 1-{MAX_IMAGES}; got {n!r}")
    resolution = _choice("input.resolution", inp.get("resolution", "2K"), ("2K", "4K"))
    if "aspect_ratio" in inp:
        _choice("input.aspect_ratio", inp["aspect_ratio"], _ASPECT_RATIOS)
    sequential = _choice(
        "input.sequential_image_generation",
        inp.get("sequential_image_generation", "disabled"),
        ("disabled", "auto"),
    )
    return prompt, n, resolution, sequential == "auto"


def _draw_ms(rng: random.Random, bounds: tuple[float, float], scale: float) -> int:
    return round(rng.uniform(bounds[0], bounds[1]) * scale * 1000)


def generation_factor(config: SimConfig, rng: random.Random, age_ms: float) -> float:
    """What the duration profile multiplies this task's generation time by (the constants
    of :mod:`runner.sim.config`). ``age_ms``: real milliseconds since the profile took
    effect (``drift``). ``docs`` draws nothing, so its runs replay those of before profiles
    existed; ``mixture`` draws the population before the duration."""
    profile = config.profile
    if profile == "slow":
        return SLOW_FACTOR
    if profile == "mixture":
        fast = rng.random() < MIXTURE_FAST_SHARE
        return MIXTURE_FAST_FACTOR if fast else MIXTURE_SLOW_FACTOR
    if profile == "drift":
        return DRIFT_FACTOR if age_ms >= config.scaled(config.drift_after_s) * 1000 else 1.0
    return 1.0


def _straggler_factor(config: SimConfig, rng: random.Random) -> float:
    """``stragglers``: 3-5 for a share of the tasks, drawn after the duration."""
    if config.profile == "stragglers" and rng.random() < STRAGGLER_SHARE:
        return rng.uniform(*STRAGGLER_FACTOR)
    return 1.0


def new_task(
    sub: Submission,
    *,
    task_id: str,
    key: str,
    origin: str,
    now_ms: int,
    config: SimConfig,
    rng: random.Random,
    profile_since_ms: float | None = None,
) -> Task:
    """Create the record of a task submitted at ``now_ms``, its fate drawn from ``rng``.

    ``profile_since_ms``: when the duration profile took effect (the server's start or the
    last time ``profile`` was set), from which ``drift`` counts; None: ``now_ms``.
    """
    scale = config.time_scale
    pending = _draw_ms(rng, config.pending_s, scale)
    age_ms = now_ms - (now_ms if profile_since_ms is None else profile_since_ms)
    factor = generation_factor(config, rng, age_ms)
    low, high = config.gen_4k_s if sub.resolution == "4K" else config.gen_2k_s
    gen_s = rng.uniform(low, high) * factor  # x1.0 (docs) leaves the draw bit for bit
    gen = round(gen_s * _straggler_factor(config, rng) * scale * 1000)
    n_images = rng.randint(1, sub.max_images) if sub.sequential else sub.max_images
    task = Task(
        task_id=task_id,
        key=key,
        origin=origin,
        submission=sub,
        create_ms=now_ms,
        processing_ms=now_ms + pending,
        complete_ms=now_ms + pending + gen,
        n_images=n_images,
        image_bytes=image_size_bytes(config.image_bytes, sub.resolution),
    )
    mark = _FAIL_MARK.search(sub.prompt)
    if mark:
        task.fail_code = mark.group(1)
    elif config.p_fail and rng.random() < config.p_fail:
        task.fail_code = rng.choice(RETRYABLE_FAIL_CODES)
    elif config.p_stuck and rng.random() < config.p_stuck:
        task.stuck = True
    if task.fail_code:
        task.fail_msg = FAIL_MESSAGES.get(task.fail_code, f"Task failed ({task.fail_code}).")
    return task
