"""``python -m runner MANIFEST [options]``: the command line, which owns signals and exit codes.

Exit codes (the contract): 0 all done, 1 some jobs failed permanently, 2 manifest, option
or configuration error (nothing sent), 3 the API refused the account, 4 stopped early with
work remaining, 5 another run holds the output folder.

Signals: the first SIGINT/SIGTERM asks the engine to stop gracefully (no new submission,
submissions on the wire land in the ledger, exit 4); a second one cancels at once.

Without a network: ``--dry-run`` (the plan: jobs, worst-case images and cost, the mix of
resolutions and aspect ratios, the budget, done / pending / failed in the ledger),
``--status`` (the same picture plus failures by code with example prompts) and
``--report`` (rewrite ``report.html``).
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

from .durations import parse_duration
from .errors import ManifestError, RunnerError
from .ledger import LedgerIndex, read_index
from .manifest import Campaign, load_campaign
from .outputs import LedgerView, ledger_view
from .progress import install_console
from .report import REPORT_NAME, write_report
from .shard import CampaignIndex, resolve_shard, shard_campaign

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["main"]

log = logging.getLogger("runner")
#: the closing line: shown even with --quiet (install_console keeps it at INFO)
final_log = logging.getLogger("runner.final")

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


def _mix(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in sorted(counts.items(), key=lambda x: -x[1]))


def _plan(campaign: Campaign, view: LedgerView) -> tuple[dict[str, Any], list[str]]:
    """The picture shared by --dry-run and --status: jobs, worst-case images and cost, the
    mix, the budget, and where the ledger stands."""
    states = view.states
    b = campaign.budget
    price = b.price_per_image
    done, failed, lost = states.get("done", 0), states.get("failed", 0), states.get("lost", 0)
    in_flight = states.get("live", 0) + states.get("downloading", 0)
    pending = view.jobs - done - failed - lost - in_flight
    data: dict[str, Any] = {
        "name": campaign.name,
        "jobs": view.jobs,
        "images": view.images_planned,
        "estimated_cost_usd": round(view.images_planned * price, 2),
        "price_per_image_usd": price,
        "max_images": b.max_images,
        "max_cost_usd": b.max_cost,
        "resolutions": dict(view.resolutions),
        "aspect_ratios": dict(view.aspect_ratios),
        "done": done,
        "failed": failed,
        "pending": pending,
        "in_flight": in_flight,
        "pending_images": view.images_pending,
        "pending_cost_usd": round(view.images_pending * price, 2),
        "images_paid": view.images_paid,
        "spent_usd": round(view.images_paid * price, 2),
        "uncertain_images_at_most": view.images_uncertain,
        "changed": view.changed,
        "changed_images": view.changed_images,
        "changed_cost_usd": round(view.changed_images * price, 2),
        "lost": view.states.get("lost", 0),
        "lost_images": view.lost_images,
        "lost_cost_usd": round(view.lost_images * price, 2),
        "ids": view.ids,
        "output": str(campaign.output.dir),
    }
    caps = []
    if b.max_images is not None:
        caps.append(f"max_images {b.max_images:,}")
    if b.max_cost is not None:
        caps.append(f"max_cost ${b.max_cost:,.2f}")
    lines = [
        f"{campaign.name}: {view.jobs:,} jobs, {view.images_planned:,} images at most, "
        f"estimated ${view.images_planned * price:,.2f} (at ${price}/image)",
        f"  budget: {', '.join(caps) if caps else 'no cap'}" + _room(campaign, view),
        f"  resolutions: {_mix(view.resolutions)}",
        f"  aspect ratios: {_mix(view.aspect_ratios)}",
        f"ledger: {done:,} done, {failed:,} failed, {lost:,} lost, {in_flight:,} in flight "
        f"(paid), {pending:,} pending ({view.images_pending:,} images, "
        f"${view.images_pending * price:,.2f} at most)",
        f"  paid so far: {view.images_paid:,} images, ${view.images_paid * price:,.2f}"
        + (
            f" (+ up to {view.images_uncertain:,} images of uncertain submissions)"
            if view.images_uncertain
            else ""
        ),
    ]
    if view.changed:
        lines.append(
            f"  changed since done: {view.changed:,} jobs run again, paid again "
            f"({view.changed_images:,} images, ${view.changed_images * price:,.2f} at most): "
            + _ids(view.ids.get("changed", []), view.changed)
        )
    if lost:
        why = ", ".join(f"{_LOST_WHY.get(c, c)} {n:,}" for c, n in view.lost_codes.most_common())
        lines.append(
            f"  lost: {lost:,} jobs were paid but their images are gone ({why}); "
            f"--retry-failed pays for them again ({view.lost_images:,} images, "
            f"${view.lost_images * price:,.2f} at most): " + _ids(view.ids.get("lost", []), lost)
        )
    return data, lines


def _room(campaign: Campaign, view: LedgerView) -> str:
    """What the cap leaves, against what was paid and may have been."""
    b = campaign.budget
    caps = [] if b.max_images is None else [b.max_images]
    if b.max_cost is not None:
        caps.append(int(b.max_cost / b.price_per_image + 1e-9))
    if not caps:
        return ""
    used = view.images_paid + view.images_uncertain
    return f" ({used:,} images paid or uncertain; room for {max(0, min(caps) - used):,} more)"


#: why a job is lost, in words (its code)
_LOST_WHY = {
    "URL_EXPIRED": "result URLs expired",
    "TASK_GONE": "the API no longer has the task",
}


def _ids(ids: Sequence[str], total: int) -> str:
    more = f" and {total - len(ids):,} more" if total > len(ids) else ""
    return ", ".join(ids) + more


def _index(campaign: Campaign) -> tuple[LedgerIndex, int]:
    """The ledgers' index and line count: the campaign's (or one shard's) with every other
    layout's folder (unsharded, shards of another N) that holds jobs of it."""
    index = CampaignIndex(campaign)
    return index, index.lines


def _dry_run(campaign: Campaign, fmt: str) -> int:
    index, _ = _index(campaign)
    data, lines = _plan(campaign, ledger_view(campaign, index))
    lines.append(f"output: {campaign.output.dir}")
    _emit(data, "\n".join(lines) + "\n", fmt)
    return 0


def _status(campaign: Campaign, fmt: str) -> int:
    index, ledger_lines = _index(campaign)
    view = ledger_view(campaign, index)
    data, lines = _plan(campaign, view)
    data.update(
        {
            "states": dict(view.states),
            "images_on_disk": view.images_done,
            "uncertain_submissions": view.uncertain,
            "failures": dict(view.failures),
            "failure_examples": view.examples,
            "ledger_lines": ledger_lines,
        }
    )
    lines.append(f"  images downloaded (as the ledger records them): {view.images_done:,}")
    lines += [f"  {state:<12} {count:,}" for state, count in sorted(view.states.items())]
    if view.uncertain:
        lines.append(f"  uncertain submissions so far: {view.uncertain:,}")
    if view.failures:
        lines.append("failures by code:")
    for code, count in view.failures.most_common():
        lines.append(f"  {code}: {count:,} job{'s' if count != 1 else ''}")
        for ex in view.examples.get(code, []):
            message = f" ({ex['message']})" if ex["message"] else ""
            lines.append(f'    {ex["id"]}: "{ex["prompt"]}"{message}')
    _emit(data, "\n".join(lines) + "\n", fmt)
    return 0


def _report(campaign: Campaign) -> int:
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


def _finished(campaign: Campaign, code: int, summary: Mapping[str, Any] | None) -> None:
    """The closing line (or a JSON record carrying the summary), always the last one:
    from the summary this run wrote, never from an older one on disk."""
    out = campaign.output.dir
    if summary is None:  # stopped at once (a second signal): no summary was written
        final_log.info(
            "finished with exit code %d: stopped at once, summary.json not rewritten; "
            "--status shows where the ledger stands; run again to continue",
            code,
        )
        return
    jobs, run = summary.get("jobs", {}), summary.get("run", {})
    api = sum(n for kind, n in summary.get("requests", {}).items() if kind != "file")
    remaining = run.get("remaining", 0)
    uncertain = summary.get("uncertain_submissions", {})
    if code == 6:
        log.warning(
            "the budget cap is reached: %d jobs remain unsubmitted, and running again "
            "changes nothing until budget.max_images or budget.max_cost is raised in the "
            "manifest",
            run.get("budget_refused", remaining),
        )
    final_log.info(
        "finished with exit code %d: %d done, %d failed, %d lost, %d remaining of %d jobs; "
        "%d images on disk; paid %d images, $%.2f; %d uncertain submissions this run; "
        "%d API requests, %d answered 429; %.1f s; summary.json, %s in %s",
        code,
        jobs.get("done", 0),
        jobs.get("failed", 0),
        jobs.get("lost", 0),
        remaining,
        jobs.get("total", 0),
        summary.get("images", 0),
        summary.get("images_paid", 0),
        summary.get("estimated_spend_usd", 0.0),
        uncertain.get("this_run", 0),
        api,
        summary.get("throttled_429", 0),
        summary.get("wall_time_s", 0.0),
        REPORT_NAME,
        out,
        extra={"summary": summary},
    )


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
    return any(n for state, n in states.items() if state not in ("done", "failed", "lost"))


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
        return 4
    if exc.errno == errno.EADDRINUSE:
        log.error(
            "cannot listen for webhooks: %s; another program holds the address of "
            "api.callback.listen: stop it or choose another port, then run again",
            reason,
        )
        return 2
    log.error(
        "cannot write the output%s: %s; make the folder writable by this user or set "
        "output.dir in the manifest to one that is, then run again",
        where,
        reason,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    install_console(args.log_format, args.quiet, not args.no_progress, sys.stderr)
    try:
        campaign = load_campaign(args.manifest, _overrides(args))
        shard = resolve_shard(args.shard, args.shards, os.environ)
        if shard is not None:
            campaign = shard_campaign(campaign, *shard)
        deadline = None
        if args.deadline is not None:
            deadline = parse_duration(args.deadline, "--deadline")
        drain = 120.0
        if args.drain is not None:
            drain = parse_duration(args.drain, "--drain")
        for warning in campaign.warnings:
            log.warning("%s", warning)
        if args.check_images:
            from .refcheck import check_images  # aiohttp: only when asked

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
        from .engine import Engine, RunOptions  # aiohttp and the rest: only to run

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
            code = asyncio.run(_run(engine))
        except BaseExceptionGroup as group:
            # A job's task hit a full disk; the task groups wrap it with its siblings.
            raise _disk_error(group) from None
    except RunnerError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    except OSError as exc:
        code = _os_error(exc)
    else:
        _finished(campaign, code, engine.summary)
        return code
    # The closing line, here too: a cron log always ends with how the run ended.
    final_log.info("finished with exit code %d: %s", code, _ENDED_EARLY.get(code, "see above"))
    return code


_ENDED_EARLY = {
    2: "nothing was sent; fix what the message above says",
    4: "everything done so far is in the ledger; run again to continue",
    5: "nothing was sent",
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
