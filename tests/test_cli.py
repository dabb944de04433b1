"""The command line's operator options: the --dry-run plan, --status, --report, the JSON
log format, the closing summary and the spending caps (exit 4, saying what remains).

Offline commands run in-process; runs go through the simulator on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from runs import image_files, out_dir, prompts, run_cli, run_engine

from runner.cli import main

LONG = "a very long prompt about a porcelain vase on a pedestal, " * 3


@pytest.fixture(autouse=True)
def runner_logger() -> Iterator[None]:
    """main() installs its console on the ``runner`` logger; put the old one back."""
    logger = logging.getLogger("runner")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    data = orjson.loads(capsys.readouterr().out)
    assert isinstance(data, dict)
    return data


def _mixed(manifest, **settings):
    jobs = [
        {"id": "plain", "prompt": "a cup"},
        {"id": "board", "prompt": "a board", "resolution": "4K", "max_images": 3},
    ]
    return manifest(jobs, matrix={"aspect_ratio": ["1:1", "16:9"]}, **settings)


def test_dry_run_plans_jobs_images_cost_mix_and_budget(manifest, capsys):
    path = _mixed(manifest, budget={"price_per_image": 0.05, "max_cost": 5})
    assert main([str(path), "--dry-run", "--log-format", "json"]) == 0
    plan = _json_out(capsys)
    assert plan["jobs"] == 4 and plan["images"] == 8  # worst case: 1 + 1 + 3 + 3
    assert plan["estimated_cost_usd"] == 0.4 and plan["price_per_image_usd"] == 0.05
    assert plan["resolutions"] == {"2K": 2, "4K": 2}
    assert plan["aspect_ratios"] == {"1:1": 2, "16:9": 2}
    assert plan["max_cost_usd"] == 5.0 and plan["max_images"] is None
    assert (plan["done"], plan["failed"], plan["pending"]) == (0, 0, 4)
    assert plan["pending_images"] == 8
    assert not out_dir(path).exists(), "a dry run writes nothing"


def test_dry_run_text_names_the_mix_and_the_cap(manifest, capsys):
    path = _mixed(manifest, budget={"max_images": 6})
    assert main([str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 jobs, 8 images at most, estimated $0.32 (at $0.04/image)" in text
    assert "budget: max_images 6" in text
    assert "resolutions: 2K 2, 4K 2" in text
    assert "aspect ratios: 1:1 2, 16:9 2" in text
    assert (
        "ledger: 0 done, 0 failed, 0 lost, 0 in flight (paid), 4 pending "
        "(8 images, $0.32 at most)" in text
    )


async def test_dry_run_counts_done_failed_and_pending_from_the_ledger(sim, manifest, capsys):
    jobs = [*prompts(3), {"prompt": "[fail:CONTENT_VIOLATION] a vase"}]
    path = manifest(jobs)
    assert (await run_engine(path, sim.base_url))[0] == 1
    requests = sum(sim.stats.requests.values())
    path = manifest([*jobs, *prompts(2, prefix="a new one")])  # two jobs added since
    assert main([str(path), "--dry-run", "--log-format", "json"]) == 0
    plan = _json_out(capsys)
    assert (plan["jobs"], plan["done"], plan["failed"], plan["pending"]) == (6, 3, 1, 2)
    assert plan["pending_images"] == 2
    assert sum(sim.stats.requests.values()) == requests, "no network"


async def test_status_groups_failures_by_code_with_example_prompts(sim, manifest, capsys):
    jobs = [
        *prompts(2),
        *({"prompt": f"[fail:CONTENT_VIOLATION] {i} {LONG}"} for i in range(4)),
        {"id": "big", "prompt": "[fail:IMAGE_TOO_LARGE] a reference too large"},
    ]
    path = manifest(jobs, limits={"concurrency": 8})
    assert (await run_engine(path, sim.base_url))[0] == 1
    assert main([str(path), "--status", "--log-format", "json"]) == 0
    status = _json_out(capsys)
    assert status["states"] == {"done": 2, "failed": 5}
    assert status["failures"] == {"CONTENT_VIOLATION": 4, "IMAGE_TOO_LARGE": 1}
    examples = status["failure_examples"]
    assert isinstance(examples, dict)
    assert len(examples["CONTENT_VIOLATION"]) == 3, "at most three examples per code"
    for ex in examples["CONTENT_VIOLATION"]:
        assert ex["prompt"].startswith("[fail:CONTENT_VIOLATION]")
        assert len(ex["prompt"]) <= 80 and ex["prompt"].endswith("…"), "long prompts are cut"
    assert examples["IMAGE_TOO_LARGE"][0]["id"] == "big"
    assert status["resolutions"] == {"2K": 7}, "the plan's picture is there too"

    assert main([str(path), "--status"]) == 0
    text = capsys.readouterr().out
    assert "failures by code:" in text
    assert "  CONTENT_VIOLATION: 4 jobs" in text and "  IMAGE_TOO_LARGE: 1 job" in text
    assert '    big: "[fail:IMAGE_TOO_LARGE] a reference too large"' in text
    assert text.count('"[fail:CONTENT_VIOLATION]') == 3


async def test_report_option_rewrites_the_page_without_network(sim, manifest, capsys):
    path = manifest(prompts(3))
    assert (await run_engine(path, sim.base_url))[0] == 0
    page = out_dir(path) / "report.html"
    assert page.is_file(), "every run writes the report"
    page.unlink()
    requests = sum(sim.stats.requests.values())
    assert main([str(path), "--report", "--base-url", "http://127.0.0.1:9/api/v1"]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    html = page.read_text()
    assert html.count('"images/') == 3 and 'id="chart-completion"' in html
    assert "Last run: exit code 0" in html, "the last run's summary is on the page"
    assert sum(sim.stats.requests.values()) == requests, "no network"


def test_report_before_any_run_is_an_empty_page(manifest, capsys):
    path = manifest(prompts(2))
    assert main([str(path), "--report"]) == 0
    html = (out_dir(path) / "report.html").read_text()
    assert "<b>2</b>pending" in html and html.count("no data yet") == 4  # wide and narrow


def test_offline_options_exclude_each_other(manifest, capsys):
    path = manifest(prompts(1))
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--status", "--report"])
    assert exc.value.code == 2


async def test_json_log_format_writes_only_json_records_and_a_closing_summary(sim, manifest):
    path = manifest([*prompts(3), {"prompt": "[fail:CONTENT_VIOLATION] no"}])
    code, err = await run_cli(path, sim.base_url, "--log-format", "json")
    assert code == 1
    records = [orjson.loads(line) for line in err.splitlines()]
    assert {r["level"] for r in records} <= {"info", "warning", "error"}
    assert any("CONTENT_VIOLATION" in r["msg"] for r in records if r["level"] == "warning")
    last = records[-1]
    assert last["msg"].startswith("finished with exit code 1")
    assert last["summary"]["jobs"] == {"total": 4, "done": 3, "failed": 1}


async def test_without_a_terminal_a_run_ends_with_one_summary_line(sim, manifest):
    path = manifest([*prompts(4), {"prompt": "two", "max_images": 2}])
    code, err = await run_cli(path, sim.base_url)
    assert code == 0
    assert "╭" not in err and "\x1b[" not in err, "no live panel on a pipe"
    last = err.strip().splitlines()[-1]
    assert (
        "finished with exit code 0: 5 done, 0 failed, 0 lost, 0 remaining of 5 jobs; "
        "6 images on disk; paid 6 images, $0.24" in last
    )
    assert "report.html" in last


async def test_quiet_prints_only_the_closing_line(sim, manifest):
    code, err = await run_cli(manifest(prompts(2)), sim.base_url, "--quiet")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "finished with exit code 0: 2 done" in lines[0]


async def test_quiet_on_a_run_with_failures_still_says_how_it_ended(sim, manifest):
    jobs = [{"prompt": f"bad {i} [fail:CONTENT_VIOLATION]"} for i in range(5)]
    code, err = await run_cli(manifest(jobs), sim.base_url, "--quiet")
    assert code == 1
    assert "finished with exit code 1: 0 done, 5 failed" in err.strip().splitlines()[-1]


async def test_failures_are_one_line_a_code_with_the_retry_hint(sim, manifest):
    sim.config.p_html = 1.0  # downloads fail: retryable
    jobs = [{"prompt": f"bad {i} [fail:CONTENT_VIOLATION]"} for i in range(6)]
    jobs += prompts(4)
    code, err = await run_cli(manifest(jobs, retry={"attempts": 1}), sim.base_url)
    assert code == 1
    assert err.count("failed: CONTENT_VIOLATION") == 1, "one line, not one per job"
    assert "6 jobs failed with CONTENT_VIOLATION this run" in err
    assert "4 of them may succeed if tried again" in err and "--retry-failed" in err


async def test_max_cost_caps_submissions_and_exit_6_says_what_remains(sim, manifest):
    path = manifest(
        prompts(10),
        limits={"concurrency": 2},
        budget={"max_cost": 0.16, "price_per_image": 0.04},
    )
    code, err = await run_cli(path, sim.base_url)
    assert code == 6
    assert sim.stats.tasks_created == 4, "0.16 at 0.04 an image is exactly four images"
    assert len(image_files(out_dir(path))) == 4
    assert "6 jobs remain unsubmitted" in err
    assert "until budget.max_images or budget.max_cost is raised" in err
    assert "run the same command again" not in err, "running again changes nothing"


async def test_max_cost_counts_whole_images_despite_float_rounding(sim, manifest):
    # 0.12 / 0.04 is 2.9999999999999996 in floating point: still three images.
    path = manifest(prompts(5), budget={"max_cost": 0.12, "price_per_image": 0.04})
    code, _ = await run_engine(path, sim.base_url)
    assert code == 6 and sim.stats.tasks_created == 3


async def test_max_images_counts_each_jobs_worst_case(sim, manifest):
    # Jobs of up to 3 images: after two of them (6 reserved) a third would exceed 7.
    jobs = [{"prompt": f"a set {i}", "max_images": 3} for i in range(4)]
    path = manifest(jobs, limits={"concurrency": 1}, budget={"max_images": 7})
    code, err = await run_cli(path, sim.base_url)
    assert code == 6
    assert sim.stats.tasks_created == 2
    assert "2 jobs remain" in err


def test_dry_run_of_a_plain_jsonl_job_list(tmp_path: Path, capsys):
    lines = [orjson.dumps({"prompt": f"p {i}", "aspect_ratio": "3:2"}) for i in range(5)]
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main([str(path), "--dry-run", "--log-format", "json"]) == 0
    plan = _json_out(capsys)
    assert plan["jobs"] == 5 and plan["aspect_ratios"] == {"3:2": 5}
    assert plan["resolutions"] == {"2K": 5}
