"""What a run shows while it works, on stderr.

On a terminal: a live panel redrawn in place twice a second (rich), with jobs per state,
images, requests per second against the limit, 429s, spend and an ETA. Anywhere else
(cron, a pipe, a log file): one concise ``progress:`` line per interval and nothing else,
as a JSON record under ``--log-format json``. ``--quiet`` and ``--no-progress`` turn the
panel off; ``--no-progress`` turns the lines off too.

Pieces:

- :class:`Snapshot`: the engine's live numbers at one moment (``Engine.snapshot()``),
  cheap enough to take every half second.
- :class:`ProgressReporter`: samples snapshots, derives rates and the ETA over sliding
  windows (:meth:`~ProgressReporter.observe`), and shows them.
- :class:`ConsoleHandler`: the stderr log handler the CLI installs. While the panel is up,
  log records are printed through rich's console above it, so a warning never tears it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from runner.manifest.campaign import Campaign

from .outputs import RunCounters

if TYPE_CHECKING:  # the client (and aiohttp) are not needed to read a ledger
    from runner.api.client import ClientStats

__all__ = [
    "ConsoleHandler",
    "JsonFormatter",
    "ProgressReporter",
    "ProgressView",
    "Snapshot",
    "install_console",
    "render",
]

log = logging.getLogger("runner")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A run's live numbers at one moment."""

    t: float  # time.monotonic() when taken
    name: str
    jobs: int  # in the manifest
    live: int  # holding a task slot: being submitted or alive on the API
    downloading: int
    done: int  # by this run, plus earlier runs' as far as the run has looked
    failed: int  # likewise
    finished: int  # done + failed by this run alone (the pace behind the ETA)
    images: int  # downloaded by this run
    images_billed: int  # produced by the API in every run: what the budget counts
    requests: int  # API requests of this run (submissions and polls, not downloads)
    throttled: int  # 429 answers in this run
    rate: int  # the request limit: ``rate`` per ``rate_period_s``
    rate_period_s: float
    price_per_image: float
    max_cost: float | None = None
    max_images: int | None = None
    #: seconds until the soonest poll is due: what the run waits for before anything
    #: can finish
    first_poll_in_s: float | None = None

    @property
    def queued(self) -> int:
        """Jobs not yet started in this run (including some done earlier that the run
        has not reached yet; they leave this count as it walks past them)."""
        return max(0, self.jobs - self.done - self.failed - self.live - self.downloading)

    @classmethod
    def take(
        cls,
        campaign: Campaign,
        counters: RunCounters,
        *,
        live: int,
        images_billed: int,
        stats: ClientStats | None,
        first_poll_in_s: float | None = None,
    ) -> Snapshot:
        requests = throttled = 0
        if stats is not None:
            requests = sum(n for kind, n in stats.requests.items() if kind != "file")
            throttled = stats.throttled
        c, b, lim = counters, campaign.budget, campaign.limits
        return cls(
            t=time.monotonic(),
            name=campaign.name,
            jobs=campaign.job_count,
            live=live,
            downloading=c.downloading,
            done=c.done + c.skipped_done,
            failed=c.failed + c.skipped_failed,
            finished=c.done + c.failed,
            images=c.images,
            images_billed=images_billed,
            requests=requests,
            throttled=throttled,
            rate=lim.rate,
            rate_period_s=lim.rate_period_s,
            price_per_image=b.price_per_image,
            max_cost=b.max_cost,
            max_images=b.max_images,
            first_poll_in_s=first_poll_in_s,
        )


@dataclass(frozen=True, slots=True)
class ProgressView:
    """A snapshot with what only a series of them can tell."""

    snap: Snapshot
    elapsed_s: float
    requests_per_s: float  # over the last few seconds
    eta_s: float | None  # None until something has finished

    @property
    def limit_per_s(self) -> float:
        return self.snap.rate / self.snap.rate_period_s

    @property
    def spend(self) -> float:
        return self.snap.images_billed * self.snap.price_per_image

    def fields(self) -> dict[str, Any]:
        """The numbers, for a JSON log record."""
        s = self.snap
        return {
            "jobs": s.jobs,
            "pending": s.queued,
            "live": s.live,
            "downloading": s.downloading,
            "done": s.done,
            "failed": s.failed,
            "images": s.images,
            "requests_per_s": round(self.requests_per_s, 2),
            "limit_per_s": round(self.limit_per_s, 2),
            "throttled_429": s.throttled,
            "spend_usd": round(self.spend, 4),
            "max_cost_usd": s.max_cost,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "elapsed_s": round(self.elapsed_s, 1),
        }

    def line(self) -> str:
        """The concise one-line form (logs, cron)."""
        s = self.snap
        return (
            f"progress: {s.done + s.failed}/{s.jobs} jobs (pending {s.queued}, live {s.live}, "
            f"downloading {s.downloading}, done {s.done}, failed {s.failed}); "
            f"{s.images} images downloaded this run; "
            f"{self.requests_per_s:.1f} req/s of {self.limit_per_s:.1f}; "
            f"{s.throttled} 429s; paid {s.images_billed} images, "
            f"{_money(self.spend, s.max_cost)}; ETA {self.eta_text}"
        )

    @property
    def eta_text(self) -> str:
        """The ETA, or before anything has finished what the run is waiting for."""
        if self.eta_s is not None:
            return _hms(self.eta_s)
        wait = self.snap.first_poll_in_s
        if wait is not None and self.snap.live:
            return f"unknown yet (first poll in {wait:.0f} s)"
        return "unknown yet"


def _hms(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _money(spend: float, cap: float | None) -> str:
    return f"${spend:,.2f}" + (f" of ${cap:,.2f}" if cap is not None else "")


def render(view: ProgressView) -> RenderableType:
    """The live panel."""
    s = view.snap
    ended = s.done + s.failed
    head = Table.grid(padding=(0, 2), expand=True)
    head.add_column(ratio=1)
    head.add_column(justify="right", no_wrap=True)
    head.add_row(
        ProgressBar(total=max(1, s.jobs), completed=ended),
        Text(
            f"{ended}/{s.jobs} jobs  {100 * ended / max(1, s.jobs):.0f}%  "
            f"ETA {view.eta_text}  elapsed {_hms(view.elapsed_s)}"
        ),
    )
    states = Text.assemble(
        ("pending ", "dim"),
        (f"{s.queued}", "bold"),
        ("   live ", "dim"),
        (f"{s.live}", "bold cyan"),
        ("   downloading ", "dim"),
        (f"{s.downloading}", "bold blue"),
        ("   done ", "dim"),
        (f"{s.done}", "bold green"),
        ("   failed ", "dim"),
        (f"{s.failed}", "bold red" if s.failed else "bold"),
    )
    busy = view.requests_per_s >= 0.9 * view.limit_per_s
    traffic = Text.assemble(
        ("images ", "dim"),
        (f"{s.images}", "bold"),
        ("   requests ", "dim"),
        (f"{view.requests_per_s:.1f}/s", "bold yellow" if busy else "bold"),
        (f" of {view.limit_per_s:.1f}/s", "dim"),
        ("   429s ", "dim"),
        (f"{s.throttled}", "bold yellow" if s.throttled else "bold"),
        ("   spend ", "dim"),
        (_money(view.spend, s.max_cost), "bold"),
    )
    return Panel(Group(head, states, traffic), title=f"runner: {s.name}", title_align="left")


class ProgressReporter:
    """Samples ``source`` every :attr:`SAMPLE_S` seconds and shows the run's progress:
    the live panel if the console handler can draw one, else a line every ``line_every_s``
    seconds. ``line_every_s <= 0`` shows nothing at all."""

    SAMPLE_S = 0.5
    RATE_WINDOW_S = 5.0  # requests per second: over this many recent seconds
    ETA_WINDOW_S = 60.0  # the completion pace behind the ETA: likewise

    def __init__(
        self,
        source: Callable[[], Snapshot],
        line_every_s: float,
        console: ConsoleHandler | None = None,
    ) -> None:
        self.source = source
        self.line_every_s = line_every_s
        self.console = console if console is not None else ConsoleHandler.installed()
        self._samples: deque[Snapshot] = deque()
        self._started: float | None = None

    def observe(self, snap: Snapshot) -> ProgressView:
        """Add a sample; return the view of it against the recent ones."""
        if self._started is None:
            self._started = snap.t
        samples = self._samples
        samples.append(snap)
        # Keep one sample at or beyond the window's far edge, so the window is full.
        while len(samples) > 2 and samples[1].t <= snap.t - self.ETA_WINDOW_S:
            samples.popleft()
        recent = next((x for x in samples if x.t >= snap.t - self.RATE_WINDOW_S), snap)
        dt = snap.t - recent.t
        req_per_s = (snap.requests - recent.requests) / dt if dt > 0 else 0.0
        remaining = snap.queued + snap.live + snap.downloading
        oldest = samples[0]
        span = snap.t - oldest.t
        pace = (snap.finished - oldest.finished) / span if span > 0 else 0.0
        eta: float | None = None
        if remaining == 0:
            eta = 0.0
        elif pace > 0:
            eta = remaining / pace
        return ProgressView(snap, snap.t - self._started, req_per_s, eta)

    @property
    def live_display(self) -> bool:
        return self.console is not None and self.console.live_capable

    async def run(self) -> None:
        """Until cancelled."""
        if self.line_every_s <= 0:
            return
        view = self.observe(self.source())
        if not self.live_display:
            next_line = view.snap.t + self.line_every_s
            while True:
                await asyncio.sleep(self.SAMPLE_S)
                view = self.observe(self.source())
                if view.snap.t >= next_line:
                    next_line = view.snap.t + self.line_every_s
                    log.info("%s", view.line(), extra={"progress": view.fields()})
        assert self.console is not None
        live = self.console.start_live(render(view))
        try:
            while True:
                await asyncio.sleep(self.SAMPLE_S)
                view = self.observe(self.source())
                live.update(render(view), refresh=True)
        finally:
            # The last frame stays on screen, with the final numbers.
            live.update(render(self.observe(self.source())), refresh=True)
            self.console.stop_live()


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a progress record carries its numbers too."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "t": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("progress", "summary"):
            value = record.__dict__.get(key)
            if value is not None:
                data[key] = value
        return orjson.dumps(data, default=str).decode()


class ConsoleHandler(logging.Handler):
    """Log records to a stream as text or JSON lines; above the live panel while it is up.

    ``live_capable``: the panel may be drawn (text format, progress wanted, a terminal).
    """

    def __init__(self, stream: TextIO, fmt: str = "text", progress: bool = True) -> None:
        super().__init__()
        self.stream = stream
        if fmt == "json":
            self.setFormatter(JsonFormatter())
        else:
            self.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
            )
        isatty = getattr(stream, "isatty", None)
        self.live_capable = progress and fmt == "text" and bool(isatty and isatty())
        self._live: Live | None = None

    @staticmethod
    def installed() -> ConsoleHandler | None:
        """The handler on the ``runner`` logger, if the CLI installed one."""
        for handler in logging.getLogger("runner").handlers:
            if isinstance(handler, ConsoleHandler):
                return handler
        return None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            live = self._live
            if live is not None:
                live.console.print(Text(msg), soft_wrap=True)
            else:
                self.stream.write(msg + "\n")
                self.stream.flush()
        except Exception:
            self.handleError(record)

    def start_live(self, first: RenderableType, console: Console | None = None) -> Live:
        """Show the panel; log records go above it until :meth:`stop_live`."""
        if console is None:
            console = Console(file=self.stream, highlight=False)
        # No refresh thread: the reporter redraws after each sample. Stray writes to
        # sys.stderr (a library's warning) are routed above the panel as well.
        live = Live(first, console=console, auto_refresh=False, redirect_stdout=False)
        live.start(refresh=True)
        self._live = live
        return live

    def stop_live(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()


def install_console(fmt: str, quiet: bool, progress: bool, stream: TextIO) -> ConsoleHandler:
    """Send the ``runner`` logger to ``stream`` (stderr): text or JSON; warnings only
    when ``quiet``; the live panel allowed when ``progress`` and not ``quiet``."""
    handler = ConsoleHandler(stream, fmt, progress and not quiet)
    root = logging.getLogger("runner")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # The closing line says how the run ended: a cron log needs it even with --quiet.
    logging.getLogger("runner.final").setLevel(logging.INFO)
    return handler
