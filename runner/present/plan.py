"""What ``--dry-run`` and ``--status`` print: the campaign's plan and where the ledger
stands, as lines for a person and one JSON object for a program.

Owns: the wording and the JSON keys of both pictures. Must not know: where the numbers
come from (a :class:`~runner.present.outputs.LedgerView`, made by the caller), or how
they are printed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.manifest.campaign import Campaign
from runner.state.record import JobState

from .outputs import LedgerView

__all__ = ["dry_run_picture", "status_picture"]


def dry_run_picture(campaign: Campaign, view: LedgerView) -> tuple[dict[str, Any], list[str]]:
    """``--dry-run``: the plan, and where the ledger stands."""
    data, lines = _picture(campaign, view)
    lines.append(f"output: {campaign.output.dir}")
    return data, lines


def status_picture(
    campaign: Campaign, view: LedgerView, ledger_lines: int
) -> tuple[dict[str, Any], list[str]]:
    """``--status``: the plan's picture, plus counts per state and failures by code with
    example prompts."""
    data, lines = _picture(campaign, view)
    data.update(
        {
            "states": view.state_counts(),
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
    return data, lines


def _picture(campaign: Campaign, view: LedgerView) -> tuple[dict[str, Any], list[str]]:
    """The picture shared by --dry-run and --status: jobs, worst-case images and cost, the
    mix, the budget, and where the ledger stands."""
    states = view.states
    b = campaign.budget
    price = b.price_per_image
    done, failed, lost = (states[s] for s in (JobState.DONE, JobState.FAILED, JobState.LOST))
    in_flight = states[JobState.LIVE] + states[JobState.DOWNLOADING]
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
        "lost": lost,
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


def _mix(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in sorted(counts.items(), key=lambda x: -x[1]))


def _ids(ids: Sequence[str], total: int) -> str:
    more = f" and {total - len(ids):,} more" if total > len(ids) else ""
    return ", ".join(ids) + more
