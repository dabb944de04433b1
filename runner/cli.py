"""``python -m runner MANIFEST [options]``: the command line, which owns signals and exit codes.

Exit codes (the contract) are :class:`runner.run.exits.ExitCode`: 0 all done, 1 some jobs
failed or were lost, 2 manifest, option or configuration error (nothing sent), 3 the API
refused the account, 4 stopped early with work remaining, 5 another run holds the output
folder, 6 the budget cap is reached with work remaining.

Signals: the first SIGINT/SIGTERM asks the engine to stop gracefully (no new submission,
submissions on the wire land in the ledger, exit 4); a second one cancels at once.

Without a network: ``--dry-run`` (the plan: jobs, worst-case images and cost, the mix of
resolutions and aspect ratios, the budget, done / pending / failed in the ledger),
``--status`` (the same picture plus failures by code with example prompts) and
``--report`` (rewrite ``report.html``).

Owns: options, signals, what is printed and the exit status. Must not know: how a run
works inside (it starts an :class:`~runner.run.engine.Engine` and reads its summary).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from runner.manifest.campaign import Campaign, load_campaign
from runner.manifest.durations import parse_duration
from runner.manifest.shards import SPLIT_NAME, read_split, record_split, resolve_shard
from runner.present.campaign_view import write_campaign_view
from runner.present.closing import log_closing, log_ended_early
from runner.present.outputs import ledger_view
from runner.present.plan import dry_run_picture, status_picture
from runner.present.progress import install_console
from runner.present.report import REPORT_NAME, write_report
from runner.run.exits import ExitCode, advice
from runner.state.index import LedgerIndex
from runner.state.layouts import CampaignIndex, CampaignView
from runner.state.ledger import read_index
from runner.state.lock import check_environment

from .errors import LockLostError, ManifestError, RunnerError

if TYPE_CHECKING:
    from runner.run.engine import Engine

__all__ = ["main"]

log = logging.getLogger("runner")

#: without a terminal, one progress line this often (a cron log stays readable)
PROGRESS_LINE_EVERY_S = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner",
        description="Turn a manifest of prompts into images through the APIXO API; "
        "run the same command again to resume.",
    )
    p.add_argument("manifest", help="campaign file (.yaml/.yml) or job list (.jsonl)")
    offline = p.add_mutually_exclusive_group()
    offline.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and plan: jobs, images, cost, mix, ledger; no network",
    )
    offline.add_argument(
        "--status",
        action="store_true",
        help="the ledger's picture, failures by code with examples; no network",
    )
    offline.add_argument(
        "--report",
        action="store_true",
        help=f"rewrite {REPORT_NAME} (and metadata.jsonl, thumbnails) in the output folder",
    )
    p.add_argument("--base-url", help="API base URL, or 'embedded' for the built-in simulator")
    p.add_argument("--concurrency", type=int, help="tasks alive on the API at once")
    p.add_argument("--rate", type=int, help="at most N API requests per --rate-period")
    p.add_argument("--rate-period", help="seconds (or '1m', '90s') of the rate window")
    p.add_argument("--downloads", type=int, help="simultaneous downloads")
    p.add_argument(
        "--deadline",
        help="stop submitting after this long ('45m', '3600'; 0 submits nothing), collect "
        "what is paid for during --drain, then exit 4",
    )
    p.add_argument(
        "--drain",
        help="after --deadline or a first signal, keep polling and downloading tasks "
        "already paid for this long (default 2m; 0 parks them at once for the next run)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="submit again jobs whose last attempt failed with a retryable code, and lost "
        "jobs (paid, images gone): the only way to pay twice; a paid job whose download "
        "failed is downloaded again, free",
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="run shard K of N (K from 0): a fixed 1/N of the jobs, in "
        "<output.dir>/shards/K-of-N/; limits are per process, so N shards on one key "
        "each need 1/N of its concurrency and rate (or one key per shard)",
    )
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="like --shard, with K from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or "
        "SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN (Slurm array)",
    )
    p.add_argument(
        "--check-images",
        action="store_true",
        help="before anything is sent (with --dry-run too), ask every reference image URL "
        "(HEAD): unreachable, not JPG/PNG/WebP or over 10 MB is exit 2",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--quiet", action="store_true", help="only warnings, errors and the closing line"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also debug lines (e.g. what the start-up index in <output>/.index/ saved)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress at all (by default: a live panel when stderr is a terminal, "
        "else one progress line every 30 s)",
    )
    return p


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


def _index(campaign: Campaign) -> tuple[LedgerIndex, int]:
    """The ledgers' index and line count: the campaign's (or one shard's) with every other
    layout's folder (unsharded, shards of another N) that holds jobs of it."""
    index = CampaignIndex(campaign)
    return index, index.lines


def _dry_run(campaign: Campaign, fmt: str) -> int:
    index, _ = _index(campaign)
    data, lines = dry_run_picture(campaign, ledger_view(campaign, index))
    _emit(data, "\n".join(lines) + "\n", fmt)
    return 0


def _status(campaign: Campaign, fmt: str) -> int:
    index, ledger_lines = _index(campaign)
    data, lines = status_picture(campaign, ledger_view(campaign, index), ledger_lines)
    _emit(data, "\n".join(lines) + "\n", fmt)
    return 0


def _report(campaign: Campaign) -> int:
    if campaign.shard is None:  # the campaign view, over every layout folder, when split
        view = CampaignView(campaign)
        try:
            if view.others:
                campaign.output.dir.mkdir(parents=True, exist_ok=True)
                path, disagreements = write_campaign_view(campaign, view)
                for kind, n in disagreements.items():
                    log.warning("layouts disagree on %d job%s: %s", n, "s" * (n != 1), kind)
                sys.stdout.write(f"{path}\n")
                return 0
        finally:
            view.close()
    index, _ = read_index(campaign.output.dir)
    summary: dict[str, Any] | None = None
    try:
        loaded = orjson.loads((campaign.output.dir / "summary.json").read_bytes())
        summary = loaded if isinstance(loaded, dict) else None
    except (OSError, orjson.JSONDecodeError):
        pass
    campaign.output.dir.mkdir(parents=True, exist_ok=True)
    path = write_report(campaign, index, summary)
    sys.stdout.write(f"{path}\n")
    return 0


def _finished(campaign: Campaign, summary: dict[str, Any] | None, code: int) -> None:
    """The advice the code calls for, then the closing line, always the last one: from the
    summary this run wrote, never from an older one on disk."""
    run = summary.get("run", {}) if summary is not None else {}
    note = advice(code, run.get("budget_refused", run.get("remaining", 0)))
    if note is not None:
        log.warning("%s", note)
    log_closing(summary, code, campaign.output.dir)


async def _run(engine: Engine) -> dict[str, Any] | None:
    """The run under the CLI's signal handling: its summary, None once cancelled."""
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
        return None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # The run has ended and its exit code stands: a SIGTERM now (a scheduler's time
        # limit arriving while the process exits) must not turn it into 143. SIGKILL and
        # Ctrl-C still end a teardown that hangs.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _disk_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first OSError in ``group`` (a write failed: disk full, file too large), else
    the group itself, re-raised unchanged."""
    found: BaseException | None = group.subgroup(lambda exc: isinstance(exc, OSError))
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found if isinstance(found, OSError) else group


def _work_needs_the_api(campaign: Campaign) -> bool:
    """Some job is not at an end in the ledger: a run must submit or poll (so it needs
    the key). A finished campaign runs without one: it checks the files and sends nothing."""
    index, _ = _index(campaign)
    states = ledger_view(campaign, index).states
    return any(n for state, n in states.items() if not state.ended)


#: errors that running again fixes once space is freed: exit 4
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _os_error(exc: OSError) -> int:
    """A system error as the operator's words and exit code: a full disk is exit 4 (free
    space, run again: the ledger holds everything done so far); a port in use or an
    output folder that cannot be written is exit 2 (the configuration must change)."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in _SPACE_ERRNOS:
        log.error("cannot write the output%s: %s; free some space and run again", where, reason)
        return ExitCode.STOPPED
    if exc.errno == errno.EADDRINUSE:
        log.error(
            "cannot listen for webhooks: %s; another program holds the address of "
            "api.callback.listen: stop it or choose another port, then run again",
            reason,
        )
        return ExitCode.CONFIG
    log.error(
        "cannot write the output%s: %s; make the folder writable by this user or set "
        "output.dir in the manifest to one that is, then run again",
        where,
        reason,
    )
    return ExitCode.CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    install_console(args.log_format, args.quiet, not args.no_progress, sys.stderr)
    ended = None
    if args.verbose and not args.quiet:
        logging.getLogger("runner").setLevel(logging.DEBUG)
    try:
        campaign = load_campaign(args.manifest, _overrides(args))
        check_environment()
        root = campaign.output.dir
        recorded = read_split(root)
        resolved = resolve_shard(args.shard, args.shards, os.environ, recorded)
        if resolved is not None:
            (k, n), split = resolved
            if recorded is not None and split is recorded:  # some indexes resubmitted
                log.warning(
                    "this array runs part of the campaign's %d-way split (recorded in "
                    "%s/shards/%s): shard %d of %d",
                    n,
                    campaign.output.dir,
                    SPLIT_NAME,
                    k,
                    n,
                )
            campaign = campaign.sharded(k, n)
        deadline = None
        if args.deadline is not None:
            deadline = parse_duration(args.deadline, "--deadline")
        drain = 120.0
        if args.drain is not None:
            drain = parse_duration(args.drain, "--drain")
        for warning in campaign.warnings:
            log.warning("%s", warning)
        if args.check_images:
            # Lazy import, for start-up time: aiohttp loads only when the check is asked for.
            from runner.api.refcheck import check_images

            log.info(
                "reference images: %d checked, all usable", asyncio.run(check_images(campaign))
            )
        if args.dry_run:
            return _dry_run(campaign, args.log_format)
        if args.status:
            return _status(campaign, args.log_format)
        if args.report:
            return _report(campaign)
        key = ""
        if not campaign.api.embedded:
            key = os.environ.get(campaign.api.key_env, "").strip()
            if not key and _work_needs_the_api(campaign):
                raise ManifestError(
                    f"no API key, and there is paid work to do: set the environment "
                    f"variable {campaign.api.key_env} (or api.key_env to the name of "
                    "another; under cron, in an env file only you can read)",
                    "environment",
                )
        if resolved is not None and resolved[1] != recorded:
            record_split(root, resolved[1])  # the campaign's split: the first, or a new one
        # Lazy import, for start-up time: the engine (and aiohttp) load only to run.
        from runner.run.allocator import tune_for_streaming
        from runner.run.engine import Engine, RunOptions

        tune_for_streaming()  # no page fault per image page received (see its module)

        engine = Engine(
            campaign,
            RunOptions(
                api_key=key,
                deadline_s=deadline,
                drain_s=drain,
                retry_failed=args.retry_failed,
                progress_every_s=0.0 if args.no_progress else PROGRESS_LINE_EVERY_S,
            ),
        )
        try:
            summary = asyncio.run(_run(engine))
        except BaseExceptionGroup as group:
            # A job's task hit a full disk; the task groups wrap it with its siblings.
            raise _disk_error(group) from None
    except RunnerError as exc:
        log.error("%s", exc)
        code = exc.exit_code
        if isinstance(exc, LockLostError):
            ended = "stopped at once; the run now holding the folder carries on from the ledger"
    except OSError as exc:
        code = _os_error(exc)
    else:
        code = int(summary["exit_code"]) if summary is not None else ExitCode.STOPPED
        _finished(campaign, summary, code)
        return code
    # The closing line, here too: a cron log always ends with how the run ended.
    log_ended_early(code, ended)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
