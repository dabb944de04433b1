"""``python -m runner MANIFEST [options]``: the command line, which owns signals and exit codes.

Exit codes (the contract): 0 all done, 1 some jobs failed permanently, 2 manifest, option
or configuration error (nothing sent), 3 the API refused the account, 4 stopped early with
work remaining, 5 another run holds the output folder.

Signals: the first SIGINT/SIGTERM asks the engine to stop gracefully (no new submission,
submissions on the wire land in the ledger, exit 4); a second one cancels at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .durations import parse_duration
from .engine import Engine, RunOptions
from .errors import ManifestError, RunnerError
from .ledger import read_index
from .manifest import Campaign, load_campaign
from .outputs import ledger_view

__all__ = ["main"]

log = logging.getLogger("runner")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner",
        description="Turn a manifest of prompts into images through the APIXO API; "
        "run the same command again to resume.",
    )
    p.add_argument("manifest", help="campaign file (.yaml/.yml) or job list (.jsonl)")
    p.add_argument("--dry-run", action="store_true", help="validate and plan; no network")
    p.add_argument("--status", action="store_true", help="print the ledger's state; no network")
    p.add_argument("--base-url", help="API base URL, or 'embedded' for the built-in simulator")
    p.add_argument("--concurrency", type=int, help="tasks alive on the API at once")
    p.add_argument("--rate", type=int, help="at most N API requests per --rate-period")
    p.add_argument("--rate-period", help="seconds (or '1m', '90s') of the rate window")
    p.add_argument("--downloads", type=int, help="simultaneous downloads")
    p.add_argument("--deadline", help="stop submitting after this long ('45m', '3600'), exit 4")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="submit again jobs whose last attempt failed with a retryable code",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    return p


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(
            {
                "t": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
        ).decode()


def _setup_logging(fmt: str, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("runner")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("base_url", "concurrency", "rate", "downloads"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    if args.rate_period is not None:
        out["rate_period"] = args.rate_period
    return out


def _emit(data: Mapping[str, Any], human: str, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        sys.stdout.write(human)


def _dry_run(campaign: Campaign, fmt: str) -> int:
    index, _ = read_index(campaign.output.dir)
    view = ledger_view(campaign, index)
    states = dict(view.states)
    price = campaign.budget.price_per_image
    todo = view.jobs - states.get("done", 0) - states.get("failed", 0)
    data = {
        "name": campaign.name,
        "jobs": view.jobs,
        "images": view.images_planned,
        "estimated_cost_usd": round(view.images_planned * price, 2),
        "done": states.get("done", 0),
        "failed": states.get("failed", 0),
        "pending": todo,
        "output": str(campaign.output.dir),
    }
    human = (
        f"{campaign.name}: {view.jobs} jobs, {view.images_planned} images at most, "
        f"estimated ${view.images_planned * price:,.2f} (at ${price}/image)\n"
        f"ledger: {data['done']} done, {data['failed']} failed, {todo} pending\n"
        f"output: {campaign.output.dir}\n"
    )
    _emit(data, human, fmt)
    return 0


def _status(campaign: Campaign, fmt: str) -> int:
    index, report = read_index(campaign.output.dir)
    view = ledger_view(campaign, index)
    states = dict(view.states)
    data = {
        "name": campaign.name,
        "jobs": view.jobs,
        "states": states,
        "images": view.images_done,
        "uncertain_submissions": view.uncertain,
        "failures": dict(view.failures),
        "failure_examples": view.examples,
        "ledger_lines": report.lines,
    }
    lines = [f"{campaign.name}: {view.jobs} jobs, {view.images_done} images on disk"]
    lines += [f"  {state:<12} {count}" for state, count in sorted(states.items())]
    if view.uncertain:
        lines.append(f"  uncertain submissions so far: {view.uncertain}")
    for code, count in view.failures.most_common():
        examples = ", ".join((view.examples).get(code, []))
        lines.append(f"  failed {code}: {count} (e.g. {examples})")
    _emit(data, "\n".join(lines) + "\n", fmt)
    return 0


async def _run(engine: Engine) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            engine.request_stop(signal.Signals(signum).name)
        elif main is not None:
            log.warning("second signal: stopping now")
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await engine.run()
    except asyncio.CancelledError:
        return 4
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_format, args.quiet)
    try:
        campaign = load_campaign(args.manifest, _overrides(args))
        deadline = None
        if args.deadline is not None:
            deadline = parse_duration(args.deadline, "--deadline")
        for warning in campaign.warnings:
            log.warning("%s", warning)
        if args.dry_run:
            return _dry_run(campaign, args.log_format)
        if args.status:
            return _status(campaign, args.log_format)
        key = ""
        if not campaign.api.embedded:
            key = os.environ.get(campaign.api.key_env, "").strip()
            if not key:
                raise ManifestError(
                    f"no API key: set the environment variable {campaign.api.key_env} "
                    "(or api.key_env to the name of another), or use --base-url embedded",
                    "environment",
                )
        engine = Engine(
            campaign,
            RunOptions(
                api_key=key,
                deadline_s=deadline,
                retry_failed=args.retry_failed,
                progress_every_s=0.0 if args.no_progress else 10.0,
            ),
        )
        code = asyncio.run(_run(engine))
    except RunnerError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except OSError as exc:
        # Disk full, permissions: the ledger holds everything done so far.
        log.error("cannot write the output: %s; free the space and run again", exc.strerror)
        return 4
    if not args.quiet:
        summary = campaign.output.dir / "summary.json"
        log.info("finished with exit code %d; summary in %s", code, summary)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
