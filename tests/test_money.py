"""Paid work: never lost, never paid twice in silence, every image counted.

Each test walks one path a user walks (the CLI as a subprocess, against a simulator on
loopback) and compares the runner's money figures with what the simulator billed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from runs import image_files, out_dir, prompts, run_cli, run_cli_sync, start_cli, wait_until

from runner.run.connect import SIM_STATE_DIR
from runner.sim import SimServer, read_billing
from runner.state.ledger import read_index
from runner.state.record import Phase


def _summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    return summary


def _billed(sim: SimServer) -> int:
    """Images the simulator billed: every task that has succeeded, times its images."""
    return sim.stats.images_billed


def _row(name: str, path: Path, billed: int, tasks: int) -> None:
    """With ``MONEY_TALLY=<file>`` set, append this path's money (one JSON line) for the
    money table of docs/RELIABILITY.md: what the API billed, what the runner counted as
    paid and as uncertain, what reached the disk. A no-op otherwise."""
    target = os.environ.get("MONEY_TALLY")
    if not target:
        return
    summary = _summary(path)
    line = {
        "path": name,
        "billed_by_api": billed,
        "tasks_created": tasks,
        "counted_paid": summary["images_paid"],
        "uncertain_at_most": summary["uncertain_submissions"]["images_at_most"],
        "on_disk": summary["images"],
        "jobs": summary["jobs"],
    }
    with open(target, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")


def _live_tasks(path: Path) -> list[str]:
    index, _ = read_index(out_dir(path))
    return [rec.task_id or "" for rec in index.values() if rec.phase is Phase.LIVE]


async def test_tasks_of_an_old_run_are_polled_again_whatever_their_age(sim, manifest):
    """polling.timeout is what one run waits: a later run polls the parked tasks again
    (the cron rerun after a deadline), never submits them again."""
    path = manifest(prompts(6), polling={"timeout": 0.5})
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.05", "--drain", "0")
    assert code == 4, err
    parked = _live_tasks(path)
    assert parked, "the deadline parked tasks alive on the API"
    await asyncio.sleep(0.6)  # the parked tasks are now older than polling.timeout
    polls_before = sim.stats.count("status")
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.count("status") > polls_before, "the old tasks were polled"
    assert set(sim.stats.submissions_per_prompt.values()) == {1}, "nothing paid twice"
    assert len(image_files(out_dir(path))) == 6
    _row("cron rerun after polling.timeout", path, _billed(sim), sim.stats.tasks_created)


async def test_deadline_drains_tasks_already_paid_for(sim, manifest):
    """--deadline stops submissions, then collects what was submitted (--drain) instead
    of parking tasks that finish seconds later."""
    path = manifest(prompts(30), limits={"concurrency": 4})
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.3")
    assert code == 4, err
    created = sim.stats.tasks_created
    assert 0 < created < 30
    assert not _live_tasks(path), "every task paid for was collected in the drain"
    assert len(image_files(out_dir(path))) == created
    assert _summary(path)["images_paid"] == _billed(sim) == created
    _row("--deadline, then drain", path, _billed(sim), sim.stats.tasks_created)


async def test_deadline_zero_submits_nothing_but_collects_paid_work(sim, manifest):
    path = manifest(prompts(20), limits={"concurrency": 4})
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.05", "--drain", "0")
    assert code == 4, err
    created = sim.stats.tasks_created
    assert _live_tasks(path) and created < 20
    code, err = await run_cli(path, sim.base_url, "--deadline", "0")
    assert code == 4, err
    assert sim.stats.tasks_created == created, "--deadline 0 submitted nothing"
    assert not _live_tasks(path), "the parked tasks were polled and collected"
    assert len(image_files(out_dir(path))) == created
    _row("--deadline 0 after a parked run", path, _billed(sim), sim.stats.tasks_created)


async def test_a_first_signal_drains_paid_work_and_drain_zero_parks_it(sim, manifest):
    path = manifest(prompts(40), limits={"concurrency": 6})
    proc = await start_cli(path, sim.base_url)
    await wait_until(lambda: sim.stats.tasks_created >= 6, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 4, err.decode()
    assert not _live_tasks(path), "the drain collected every task alive at the signal"
    assert len(image_files(out_dir(path))) == sim.stats.tasks_created
    proc = await start_cli(path, sim.base_url, "--drain", "0")
    created = sim.stats.tasks_created
    await wait_until(lambda: sim.stats.tasks_created >= created + 6, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 4, err.decode()
    assert _live_tasks(path), "--drain 0 parks what is alive for the next run"
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert set(sim.stats.submissions_per_prompt.values()) == {1}
    _row("SIGTERM (drain), SIGTERM --drain 0, rerun", path, _billed(sim), sim.stats.tasks_created)


async def test_images_paid_but_not_downloaded_count_and_the_cap_holds(sim, manifest):
    """Spend and budget.max_images count what the API billed, not what reached the disk;
    --retry-failed downloads paid images again instead of paying again."""
    sim.config.p_html = 1.0  # every download is an HTML error page
    path = manifest(prompts(3), budget={"max_images": 3}, retry={"attempts": 2})
    code, err = await run_cli(path, sim.base_url)
    assert code == 1, err
    summary = _summary(path)
    assert summary["images"] == 0 and summary["images_paid"] == _billed(sim) == 3
    assert summary["estimated_spend_usd"] == round(3 * 0.04, 4)
    assert "paid 3 images, $0.12" in err.strip().splitlines()[-1]
    sim.config.p_html = 0.0
    code, err = await run_cli(path, sim.base_url, "--retry-failed")
    assert code == 0, err
    assert sim.stats.tasks_created == 3, "the paid images were downloaded, not paid again"
    assert len(image_files(out_dir(path))) == 3
    # One more job: the cap counts the three images paid, so nothing is submitted.
    more = manifest(prompts(4), budget={"max_images": 3}, retry={"attempts": 2})
    code, err = await run_cli(more, sim.base_url)
    assert code == 6, err
    assert sim.stats.tasks_created == 3 and _billed(sim) == 3
    _row("paid, download failed; --retry-failed; cap", more, _billed(sim), sim.stats.tasks_created)


async def test_an_edited_job_is_priced_by_dry_run_and_its_first_version_stays_paid(sim, manifest):
    jobs: list[dict[str, Any]] = [
        {"id": "hero", "prompt": "a teapot"},
        {"id": "side", "prompt": "a cup"},
    ]
    path = manifest(jobs)
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    jobs[0]["prompt"] = "a teapot at golden hour"
    path = manifest(jobs)
    code, out = await _dry_run(path)
    assert code == 0
    assert "changed since done: 1 jobs run again" in out and "hero" in out
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    summary = _summary(path)
    assert sim.stats.tasks_created == 3
    assert summary["images_paid"] == _billed(sim) == 3, "the first version stays paid"
    assert summary["images"] == 2
    _row("edited job", path, _billed(sim), sim.stats.tasks_created)


async def _dry_run(path: Path) -> tuple[int, str]:
    code, out, _ = run_cli_sync(path, "--dry-run")
    return code, out


# -- the embedded simulator (the demo): it keeps its tasks in the output folder ----------


def _demo(tmp_path: Path, time_scale: float = 0.02) -> Path:
    """The README's demo, copied beside the test (its output lands under tmp_path)."""
    demo = (Path(__file__).parent.parent / "manifests" / "demo.yaml").read_text()
    path = tmp_path / "demo.yaml"
    path.write_text(demo.replace("time_scale: 0.02", f"time_scale: {time_scale}"))
    return path


def _demo_billing(path: Path) -> dict[str, Any]:
    return read_billing(out_dir(path) / SIM_STATE_DIR)


def _uncertain_by_prompt(path: Path) -> dict[str, int]:
    from runner.manifest.campaign import load_campaign

    campaign = load_campaign(path, {})
    index, _ = read_index(out_dir(path))
    found: dict[str, int] = {}
    for job in campaign.jobs():
        _, _, _, uncertain = index.status(job.id, job.fingerprint)
        found[str(job.input["prompt"])] = found.get(str(job.input["prompt"]), 0) + uncertain
    return found


def _assert_paid_once_or_uncertain(path: Path) -> None:
    """Every task beyond a job's first was preceded by an uncertain record of that job."""
    per_prompt = _demo_billing(path)["submissions_per_prompt"]
    jobs_per_prompt: dict[str, int] = {}
    from runner.manifest.campaign import load_campaign

    for job in load_campaign(path, {}).jobs():
        prompt = str(job.input["prompt"])
        jobs_per_prompt[prompt] = jobs_per_prompt.get(prompt, 0) + 1
    uncertain = _uncertain_by_prompt(path)
    for prompt, tasks in per_prompt.items():
        assert tasks - jobs_per_prompt[prompt] <= uncertain.get(prompt, 0), prompt


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
async def test_the_demo_resumes_after_a_kill_with_nothing_lost(tmp_path, sig):
    path = _demo(tmp_path, time_scale=0.05)
    proc = await start_cli(path, "embedded", key="")
    await wait_until(lambda: _demo_billing(path)["tasks_created"] >= 10, proc)
    proc.send_signal(sig)
    await proc.wait()
    assert proc.returncode in (0, 4, -signal.SIGKILL)  # 0: all was submitted, then drained
    code, err = await run_cli(path, "embedded", key="")
    assert code == 0, err
    assert "NOT_FOUND" not in err
    summary = _summary(path)
    billing = _demo_billing(path)
    assert summary["jobs"]["done"] == summary["jobs"]["total"] == 24
    paid, on_disk = summary["images_paid"], summary["images"]
    uncertain = summary["uncertain_submissions"]["images_at_most"]
    assert paid == on_disk
    if sig == signal.SIGINT:  # a graceful stop leaves nothing uncertain
        assert uncertain == 0 and paid == billing["images_billed"]
    else:  # a kill may hide a billed task; it is reported as uncertain
        assert paid <= billing["images_billed"] <= paid + uncertain
    _assert_paid_once_or_uncertain(path)
    _row(f"demo: {sig.name}, rerun", path, billing["images_billed"], billing["tasks_created"])


async def test_the_demo_downloads_a_deleted_image_again_without_paying(tmp_path):
    path = _demo(tmp_path)
    code, err = await run_cli(path, "embedded", key="")
    assert code == 0, err
    billed = _demo_billing(path)
    victim = image_files(out_dir(path))[0]
    victim.unlink()
    code, err = await run_cli(path, "embedded", key="")
    assert code == 0, err
    assert victim.is_file(), "the deleted image is back"
    assert _demo_billing(path) == billed, "and nothing was paid for it"
    _row("demo: image deleted, rerun", path, billed["images_billed"], billed["tasks_created"])
    status = await _cli_out(path, "--status")
    assert "done" in status


async def _cli_out(path: Path, *args: str) -> str:
    return run_cli_sync(path, *args)[1]


async def test_resharding_a_finished_campaign_pays_nothing_and_counts_money_once(sim, manifest):
    path = manifest(prompts(12))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    billed = _billed(sim)
    for shard in ("0/2", "1/2", "2/3"):
        code, err = await run_cli(path, sim.base_url, "--shard", shard)
        assert code == 0, err
    assert sim.stats.tasks_created == 12 and _billed(sim) == billed
    status = orjson.loads(await _cli_out(path, "--status", "--log-format", "json"))
    assert status["done"] == 12
    assert status["images_paid"] == billed, "each image counted once, where it was paid"
    _row("re-shard a finished campaign (0/2, 1/2, 2/3)", path, billed, sim.stats.tasks_created)


async def test_a_5xx_after_the_task_was_created_is_uncertain_and_reported(sim, manifest):
    """A gateway passed the POST on, the task was created and billed, and the client saw
    a 5xx: the resend is preceded by an ``uncertain`` record, counted in the summary and
    the closing line, and the bound covers what the API billed."""
    sim.config.p_5xx_after_create = 0.5
    path = manifest(prompts(8), retry={"uncertain": 20})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    extra = sim.stats.tasks_created - 8
    assert extra == sim.stats.faults["5xx_after_create"] > 0
    summary = _summary(path)
    assert summary["uncertain_submissions"]["this_run"] == extra
    assert f"{extra} uncertain submissions this run" in err.strip().splitlines()[-1]
    paid, bound = summary["images_paid"], summary["uncertain_submissions"]["images_at_most"]
    assert paid == 8 and paid <= _billed(sim) <= paid + bound
    _row("5xx after the task was created", path, _billed(sim), sim.stats.tasks_created)


async def test_unreadable_status_answers_never_fail_a_paid_task(sim, manifest):
    sim.config.bad_status_first = 2  # the first two polls of every task are garbage
    path = manifest(prompts(6), retry={"attempts": 2})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.faults["bad_status"] >= 12
    assert sim.stats.tasks_created == 6, "no task paid twice"
    assert _summary(path)["images_paid"] == _billed(sim) == 6
    _row("unreadable status answers", path, _billed(sim), sim.stats.tasks_created)


async def test_live_tasks_held_by_another_client_make_jobs_wait_not_fail(sim, manifest):
    sim.config.concurrency = 4
    sim.config.foreign_live = 3  # another process of this key holds three of four slots
    sim.config.foreign_hold_s = 100.0  # ... for a second at this time scale
    path = manifest(prompts(10), limits={"concurrency": 4}, retry={"attempts": 2})
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.faults["foreign_live"] > 2, "the limit really was held elsewhere"
    assert "SUBMIT_FAILED" not in err
    assert sim.stats.tasks_created == 10
    _row("live-task limit held by another client", path, _billed(sim), sim.stats.tasks_created)


async def test_expired_urls_make_a_job_lost_priced_by_dry_run_and_paid_again_on_request(
    sim, manifest
):
    sim.config.url_ttl_s = 0.0  # every result URL is dead when handed out
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url)
    assert code == 1, err
    summary = _summary(path)
    assert summary["jobs"]["lost"] == 3 and summary["images"] == 0
    assert summary["images_paid"] == _billed(sim) == 3, "lost images were paid"
    results = [orjson.loads(line) for line in (out_dir(path) / "results.jsonl").open("rb")]
    assert {r["state"] for r in results} == {"lost"}
    assert {r["fail_code"] for r in results} == {"URL_EXPIRED"}
    code, out = await _dry_run(path)
    assert "lost: 3 jobs were paid but their images are gone" in out
    assert "--retry-failed pays for them again (3 images, $0.12 at most)" in out
    code, err = await run_cli(path, sim.base_url)
    assert code == 1 and sim.stats.tasks_created == 3, "never paid again in silence"
    sim.config.url_ttl_s = 1e6
    code, err = await run_cli(path, sim.base_url, "--retry-failed")
    assert code == 0, err
    assert sim.stats.tasks_created == 6
    assert _summary(path)["images_paid"] == _billed(sim) == 6
    _row("expired URLs: lost, then --retry-failed", path, _billed(sim), sim.stats.tasks_created)


async def test_uncertain_submissions_count_against_the_cap(sim, manifest):
    """A submission whose outcome is unknown may have been billed: it is not resent when
    that could pass budget.max_images, and the run ends at the cap (exit 6)."""
    sim.config.p_5xx_after_create = 1.0  # every submission is billed and answered 502
    path = manifest(prompts(3), limits={"concurrency": 1}, budget={"max_images": 2})
    code, err = await run_cli(path, sim.base_url)
    assert code == 6, err
    assert sim.stats.tasks_created == 2, "the cap held against what may have been billed"
    summary = _summary(path)
    assert summary["uncertain_submissions"]["images_at_most"] == 2
    assert summary["images_paid"] <= _billed(sim) <= 2
    _row("5xx after create under a cap of 2", path, _billed(sim), sim.stats.tasks_created)


async def test_a_404_for_a_young_task_keeps_it_live_not_lost(sim, manifest):
    """The cron env file got another key: the API (another account) answers 404 for the
    tasks the first key submitted. They are younger than the API keeps tasks, so they stay
    live (exit 4, a warning naming the key), and the right key collects them unpaid."""
    path = manifest(prompts(5), limits={"concurrency": 5})
    code, err = await run_cli(path, sim.base_url, "--deadline", "0.05", "--drain", "0")
    assert code == 4, err
    parked = _live_tasks(path)
    assert parked
    code, err = await run_cli(path, sim.base_url, "--deadline", "0", key="another-key-987654321")
    assert code == 4, err
    assert "is APIXO_API_KEY the key that submitted it?" in err
    assert _live_tasks(path) == parked, "not lost: still live in the ledger"
    created = sim.stats.tasks_created
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert sim.stats.tasks_created == 5 and created <= 5
    assert _summary(path)["images_paid"] == _billed(sim) == 5


async def test_the_cap_counts_what_other_layouts_paid(sim, manifest):
    """Shards, then an unsharded run: the unsharded run's cap counts what the shard
    folders paid, so it submits nothing more once the campaign reached the cap."""
    path = manifest(prompts(30), budget={"max_images": 10})
    for shard in ("0/2", "1/2"):
        await run_cli(path, sim.base_url, "--shard", shard)
    created = sim.stats.tasks_created
    assert created > 10, "each shard folder spent up to the cap on its own"
    code, err = await run_cli(path, sim.base_url)
    assert code == 6, err
    assert sim.stats.tasks_created == created, "nothing more past the campaign's cap"
    code, out, _ = run_cli_sync(path, "--dry-run")
    assert f"({_billed(sim)} images paid or uncertain; room for 0 more)" in out
