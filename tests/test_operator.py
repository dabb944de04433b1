"""Errors a person can act on and exit codes a cron wrapper can trust: each finding of the
operator's review, through the CLI as a subprocess (exit code and the key words)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
from runs import TEST_KEY, out_dir, prompts, run_cli


def _summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = orjson.loads((out_dir(path) / "summary.json").read_bytes())
    return summary


async def test_an_unwritable_output_folder_is_exit_2_and_says_what_to_fix(sim, manifest):
    path = manifest(prompts(3), output={"dir": "/proc/runner-cannot-write-here"})
    code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert "cannot write the output" in err and "make the folder writable" in err
    assert "free" not in err, "not a full disk"
    assert sim.stats.tasks_created == 0


async def test_report_into_an_unwritable_folder_is_exit_2(sim, manifest):
    path = manifest(prompts(1), output={"dir": "/proc/runner-cannot-write-here"})
    code, err = await run_cli(path, sim.base_url, "--report")
    assert code == 2, err
    assert "make the folder writable" in err


async def test_a_callback_port_in_use_is_exit_2_naming_the_setting(sim, manifest):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = manifest(
            prompts(2), api={"mode": "callback", "callback": {"listen": f"127.0.0.1:{port}"}}
        )
        code, err = await run_cli(path, sim.base_url)
    assert code == 2, err
    assert "api.callback.listen" in err and "another port" in err
    assert "free" not in err
    assert sim.stats.tasks_created == 0


async def test_the_budget_cap_is_exit_6_every_time_until_raised(sim, manifest):
    path = manifest(prompts(5), budget={"max_images": 2})
    for _ in range(2):  # running again changes nothing
        code, err = await run_cli(path, sim.base_url)
        assert code == 6, err
        assert "3 jobs remain unsubmitted" in err
        assert "run the same command again" not in err
    assert sim.stats.tasks_created == 2
    raised = manifest(prompts(5), budget={"max_images": 5})
    code, err = await run_cli(raised, sim.base_url)
    assert code == 0, err


async def test_a_refused_key_is_exit_3_and_the_line_agrees_with_the_summary(sim, manifest):
    sim.config.api_key = "the-right-key-0123456789"
    path = manifest(prompts(20))
    code, err = await run_cli(path, sim.base_url, key=TEST_KEY)
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    summary = _summary(path)
    assert summary["jobs"]["pending"] == 20
    assert "20 remaining of 20 jobs" in last


async def test_no_key_is_needed_when_every_job_is_done(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    requests = sim.stats.count()
    code, err = await run_cli(path, sim.base_url, key="")
    assert code == 0, err
    assert sim.stats.count() == requests, "nothing was sent"


async def test_no_key_with_paid_work_left_is_exit_2_before_anything_is_sent(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url, key="")
    assert code == 2, err
    assert "no API key" in err and "APIXO_API_KEY" in err
    assert sim.stats.count() == 0


async def test_a_torn_ledger_line_is_told_in_plain_words(sim, manifest):
    path = manifest(prompts(3))
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    with (out_dir(path) / "ledger.jsonl").open("ab") as f:
        f.write(b'{"e": "submit", "job": "x", "t"')  # a kill mid-write
    code, err = await run_cli(path, sim.base_url)
    assert code == 0, err
    assert "the last line was cut short by a kill; it is ignored" in err
    assert "=True" not in err
