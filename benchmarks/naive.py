"""The provider's polling recipe, written the way a competent user would from the API page:
the yardstick the runner is measured against in ``perf.py``.

For each job, under an ``asyncio.Semaphore(concurrency)`` (the live-task limit): submit,
sleep ``initial_delay_s`` (the page says 20 s), then poll every ``interval_s`` (3 s) until
``success`` or ``failed``; release the slot and stream the images to disk. A 429 waits
``Retry-After`` (or ``retry_after_s`` without one) and sends the same request again; a 5xx
or a broken connection is retried after a short exponential backoff. There is no
client-side rate limiter, because the recipe has none: at full concurrency its polls
exceed the request budget, which is exactly what the benchmark shows.

Against a limiter that counts rejected requests (the API page says to assume it does, and
the simulator does), the recipe as written can lock up for good: once the window is full,
a thousand waiters each retrying every ``Retry-After`` keep it full, and nothing succeeds
again. ``on_429="backoff"`` is the same recipe with the error table's "slow down" taken
literally: consecutive 429s of one request double the wait (from ``Retry-After``, capped
at ``max_backoff_s``, jittered). ``stall_s`` ends a run in which nothing was submitted or
finished for that long (reported as ``stalled``), so a locked-up run still ends.

``shared_limit`` (``--shared-limit RATE``, requests per ``--shared-period``, 60 s) is what
a skilled user adds in an afternoon: the same recipe with every API request (submissions,
polls and their retries; downloads are not counted by the API) first taking a token from
one ``aiolimiter.AsyncLimiter`` shared by all jobs. A leaky bucket lets a full bucket
through at once after a quiet spell, so a bucket of ``r`` requests a second that holds
``r * b`` can pass ``r * (period + b)`` in one window of ``period``; it is sized with
``b`` = one sixtieth of the period (a second of a minute) and ``r = RATE / (period + b)``,
so no window of the API ever sees more than ``RATE`` and no 429 is expected.

It keeps, per job, the local Unix time of the submission, the status answer's
``createTime``/``completeTime`` and the local time it saw the terminal state, so that the
figures of ``common.schedule_figures`` (makespan efficiency, detection lag) can be computed
for it exactly as for the runner.

    python benchmarks/naive.py --base-url URL --jobs-file jobs.jsonl --out DIR \\
        [--concurrency 1000] [--initial-delay 20] [--interval 3] [--report FILE]
        [--on-429 retry-after|backoff] [--stall S] [--shared-limit RATE [--shared-period S]]

Each line of the jobs file is a job object (``id`` and ``meta`` are taken out, the rest is
the API's ``input``; ``max_images`` defaults to 1). Prints a JSON summary; ``--report``
also writes the per-job records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

sys.path.insert(0, str(Path(__file__).parent))

from common import schedule_figures

MODEL = "seedream-4-5"
TERMINAL = ("success", "failed")


class RequestFailed(Exception):
    """An answer that retrying will not fix (400, 401, 403, 404), or retries used up."""


class _Stalled(Exception):
    """Nothing was submitted or finished for ``stall_s``."""


class _ServerError(Exception):
    """A 5xx answer: retried like a broken connection."""


class NaiveClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retry_after_s: float,
        backoff_s: float,
        attempts: int,
        on_429: str = "retry-after",
        max_backoff_s: float = 30.0,
        limiter: AsyncLimiter | None = None,
    ) -> None:
        self.session = session
        self.limiter = limiter
        self.base_url = base_url.rstrip("/")
        self.retry_after_s = retry_after_s
        self.backoff_s = backoff_s
        self.attempts = attempts
        self.on_429 = on_429
        self.max_backoff_s = max_backoff_s
        #: monotonic time of the last submission accepted or task seen finished
        self.progress_t = time.monotonic()
        #: (kind, HTTP status) of every answer; status 0 for a connection error
        self.answers: Counter[tuple[str, int]] = Counter()

    async def _api(self, kind: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One API call: wait out 429s, retry 5xx and connection errors, return ``data``."""
        failures = throttled = 0
        while True:
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                async with self.session.request(method, url, **kwargs) as resp:
                    self.answers[kind, resp.status] += 1
                    if resp.status == 429:
                        throttled += 1
                        await asyncio.sleep(self._throttle_wait(resp, throttled))
                        continue
                    if resp.status >= 500:
                        raise _ServerError(f"{kind}: HTTP {resp.status}")
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise RequestFailed(f"{kind}: HTTP {resp.status} {body}")
                    data: dict[str, Any] = body["data"]
                    return data
            except (aiohttp.ClientError, TimeoutError, _ServerError) as exc:
                if not isinstance(exc, _ServerError):
                    self.answers[kind, 0] += 1
                failures += 1
                if failures >= self.attempts:
                    raise RequestFailed(f"{kind}: gave up after {failures} tries: {exc}") from exc
                await asyncio.sleep(self.backoff_s * 2 ** (failures - 1))

    def _throttle_wait(self, resp: aiohttp.ClientResponse, times: int) -> float:
        wait = _retry_after(resp) or self.retry_after_s
        if self.on_429 == "backoff":
            wait = min(self.max_backoff_s, wait * 2 ** (times - 1)) * random.uniform(1.0, 1.5)
        return wait

    async def submit(self, job_input: dict[str, Any]) -> str:
        body = {"request_type": "async", "input": job_input}
        data = await self._api(
            "generate", "POST", f"{self.base_url}/generateTask/{MODEL}", json=body
        )
        return str(data["taskId"])

    async def status(self, task_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/statusTask/{MODEL}"
        return await self._api("status", "GET", url, params={"taskId": task_id})

    async def download(self, url: str, dest: Path) -> int:
        """Stream one image to ``dest`` (through a temporary name); returns its size."""
        failures = 0
        while True:
            try:
                async with self.session.get(url) as resp:
                    self.answers["file", resp.status] += 1
                    if resp.status != 200:
                        raise RequestFailed(f"download: HTTP {resp.status}")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_suffix(".part")
                    size = 0
                    with tmp.open("wb") as f:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            f.write(chunk)
                            size += len(chunk)
                    tmp.replace(dest)
                    return size
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers["file", 0] += 1
                failures += 1
                if failures >= self.attempts:
                    raise RequestFailed(f"download: gave up: {exc}") from exc
                await asyncio.sleep(self.backoff_s * 2 ** (failures - 1))


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "")))
    except ValueError:
        return None


def shared_limiter(rate: float, period_s: float) -> AsyncLimiter:
    """One bucket that never lets more than ``rate`` requests into any window of
    ``period_s`` (see the module docstring)."""
    burst_s = period_s / 60
    per_s = rate / (period_s + burst_s)
    return AsyncLimiter(max_rate=per_s * burst_s, time_period=burst_s)


def _job_input(job: dict[str, Any]) -> dict[str, Any]:
    job_input = {k: v for k, v in job.items() if k not in ("id", "meta")}
    job_input.setdefault("max_images", 1)
    return job_input


async def run_naive(
    base_url: str,
    jobs: list[dict[str, Any]],
    out_dir: Path,
    concurrency: int,
    initial_delay_s: float,
    interval_s: float,
    *,
    api_key: str = "bench-key",
    retry_after_s: float = 1.0,
    backoff_s: float = 0.5,
    attempts: int = 8,
    timeout_s: float | None = None,
    on_429: str = "retry-after",
    max_backoff_s: float = 30.0,
    stall_s: float | None = None,
    shared_limit: float | None = None,
    shared_period_s: float = 60.0,
) -> dict[str, Any]:
    """Run ``jobs`` through the provider's recipe; return the counts, the answers seen,
    the per-job ``records`` and the figures of ``common.schedule_figures``.

    ``retry_after_s`` is the wait after a 429 without ``Retry-After``; ``backoff_s`` the
    first wait after a 5xx or a connection error (doubled each time, ``attempts`` tries);
    ``timeout_s`` (from submission) gives a task up, None waits for ever. ``on_429``,
    ``max_backoff_s``, ``stall_s``, ``shared_limit`` and ``shared_period_s``: see the
    module docstring."""
    out_dir = Path(out_dir)
    slots = asyncio.Semaphore(concurrency)
    records: list[dict[str, Any]] = [
        {"id": str(job.get("id", i)), "state": "new"} for i, job in enumerate(jobs)
    ]

    async def one(job: dict[str, Any], rec: dict[str, Any]) -> None:
        try:
            async with slots:
                rec["submit_t"] = time.time()
                task_id = rec["task_id"] = await client.submit(_job_input(job))
                client.progress_t = time.monotonic()
                await asyncio.sleep(initial_delay_s)
                rec["polls"] = 0
                while True:
                    status = await client.status(task_id)
                    rec["polls"] += 1
                    if status.get("state") in TERMINAL:
                        break
                    if timeout_s is not None and time.time() - rec["submit_t"] > timeout_s:
                        rec["state"] = "timeout"
                        return
                    await asyncio.sleep(interval_s)
                rec["t"] = time.time()
                client.progress_t = time.monotonic()
                rec["state"] = status["state"]
                rec["create_ms"] = status.get("createTime")
                rec["complete_ms"] = status.get("completeTime")
            if status["state"] != "success":
                rec["fail_code"] = status.get("failCode")
                return
            urls = json.loads(status["resultJson"])["resultUrls"]
            rec["files"] = []
            for index, url in enumerate(urls):
                dest = out_dir / "images" / rec["id"] / f"{index}.png"
                await client.download(url, dest)
                rec["files"].append(str(dest.relative_to(out_dir)))
            rec["state"] = "done"
        except RequestFailed as exc:
            rec["state"] = "error"
            rec["error"] = str(exc)

    started = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout
    ) as session:
        client = NaiveClient(
            session,
            base_url,
            retry_after_s=retry_after_s,
            backoff_s=backoff_s,
            attempts=attempts,
            on_429=on_429,
            max_backoff_s=max_backoff_s,
            limiter=shared_limiter(shared_limit, shared_period_s) if shared_limit else None,
        )

        async def watchdog(stall_s: float) -> None:
            while True:  # sleep until stall_s after the last progress, then check again
                left = client.progress_t + stall_s - time.monotonic()
                if left <= 0:
                    raise _Stalled
                await asyncio.sleep(left)

        stalled_at: float | None = None
        try:
            async with asyncio.TaskGroup() as outer:
                dog = outer.create_task(watchdog(stall_s)) if stall_s else None
                async with asyncio.TaskGroup() as tg:
                    for job, rec in zip(jobs, records, strict=True):
                        tg.create_task(one(job, rec))
                if dog is not None:
                    dog.cancel()
        except* _Stalled:
            stalled_at = time.monotonic() - started
    wall = time.monotonic() - started

    answers: dict[str, dict[str, int]] = {}
    for (kind, status_code), n in sorted(client.answers.items()):
        answers.setdefault(kind, {})[str(status_code)] = n
    states = Counter(rec["state"] for rec in records)
    submits = [rec["submit_t"] for rec in records if "submit_t" in rec]
    results = sorted((rec for rec in records if "t" in rec), key=lambda rec: rec["t"])
    polls = sum(rec.get("polls", 0) for rec in records)
    figures = schedule_figures(submits, results, concurrency)
    if stalled_at is not None:
        # Its makespan has no end: the figures of the jobs that did finish would flatter it.
        figures = {"efficiency": 0.0, **{k: v for k, v in figures.items() if "lag" in k}}
    return {
        "jobs": len(jobs),
        "states": dict(states),
        "stalled": stalled_at is not None,
        **(
            {
                "stalled_after_s": round(stalled_at, 1),
                "last_progress_s": round(client.progress_t - started, 1),
            }
            if stalled_at is not None
            else {}
        ),
        "wall_s": round(wall, 3),
        "answers": answers,
        "polls_per_job": round(polls / len(jobs), 3) if jobs else 0.0,
        **figures,
        "records": records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--jobs-file", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--initial-delay", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--retry-after", type=float, default=1.0, help="wait after a bare 429")
    ap.add_argument("--backoff", type=float, default=0.5, help="first wait after a 5xx")
    ap.add_argument("--timeout", type=float, default=None, help="give a task up after S")
    ap.add_argument("--on-429", choices=("retry-after", "backoff"), default="retry-after")
    ap.add_argument("--max-backoff", type=float, default=30.0, help="cap of --on-429 backoff")
    ap.add_argument("--stall", type=float, default=None, help="end a run stuck for S")
    ap.add_argument(
        "--shared-limit", type=float, help="one limiter bucket: at most RATE requests a period"
    )
    ap.add_argument("--shared-period", type=float, default=60.0, help="its period, seconds")
    ap.add_argument("--report", type=Path, help="also write the full report, records included")
    args = ap.parse_args()
    jobs = [json.loads(line) for line in args.jobs_file.read_text().splitlines() if line.strip()]
    report = asyncio.run(
        run_naive(
            args.base_url,
            jobs,
            args.out,
            args.concurrency,
            args.initial_delay,
            args.interval,
            retry_after_s=args.retry_after,
            backoff_s=args.backoff,
            timeout_s=args.timeout,
            on_429=args.on_429,
            max_backoff_s=args.max_backoff,
            stall_s=args.stall,
            shared_limit=args.shared_limit,
            shared_period_s=args.shared_period,
        )
    )
    if args.report:
        args.report.write_text(json.dumps(report))
    print(json.dumps({k: v for k, v in report.items() if k != "records"}, indent=2))


if __name__ == "__main__":
    main()
