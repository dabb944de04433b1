"""The API key never leaves the Authorization header: not in logs (text or JSON), the
ledger, results, summary, report, status output or any error message, whatever went
wrong during the run. Checked by searching every byte a run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from runs import prompts, run_cli

from runner.sim import SimServer

pytestmark = pytest.mark.faults

KEY = "sk-SECRET-k3y-0f-the-test-5ea7c1a2b9"


def _leaks(folder: Path, *texts: str) -> list[str]:
    """Where the key (or a recognisable piece of it) appears."""
    needles = [KEY.encode(), KEY[3:20].encode(), KEY[-12:].encode()]
    found = [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]
    found += [f"output #{i}" for i, t in enumerate(texts) if any(n.decode() in t for n in needles)]
    return found


async def test_key_appears_in_no_artefact_of_a_run_with_every_kind_of_trouble(
    sim: SimServer, manifest, tmp_path
):
    """A run through 429s, 5xx, resets, malformed answers, failed tasks and corrupted
    downloads, then --status, --dry-run and --report, in text and JSON logs: the key is in
    none of the files or outputs."""
    sim.config.update(
        {
            "p_429": 0.1,
            "p_5xx": 0.1,
            "p_reset": 0.05,
            "p_reset_after": 0.05,
            "p_hostile": 0.2,
            "p_corrupt": 0.1,
            "p_fail": 0.2,
        }
    )
    jobs = [*prompts(8), {"prompt": "refused [fail:CONTENT_VIOLATION]"}]
    path = manifest(jobs, limits={"concurrency": 4})
    outputs: list[str] = []
    for extra in (("--log-format", "json"), ("--log-format", "text"), ("--status",)):
        code, err = await run_cli(path, sim.base_url, *extra, key=KEY)
        assert code in (0, 1, 4), err
        outputs.append(err)
    for extra in (("--dry-run",), ("--report",), ("--status", "--log-format", "json")):
        code, err = await run_cli(path, sim.base_url, *extra, key=KEY)
        outputs.append(err)
    assert sim.stats.requests, "the run talked to the API"
    assert not _leaks(tmp_path, *outputs)


async def test_key_refused_by_the_api_is_not_echoed_in_the_error(
    sim: SimServer, manifest, tmp_path
):
    """A 401 for a wrong key: exit 3 with a message that says what to check, without the
    key itself."""
    sim.config.api_key = "the-only-valid-key"
    path = manifest(prompts(2))
    code, err = await run_cli(path, sim.base_url, key=KEY)
    assert code == 3, err
    assert "401" in err
    assert not _leaks(tmp_path, err)
