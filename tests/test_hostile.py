"""Hostile input (``pytest -m faults``): any value anywhere in a manifest is an exit-2 error
that names where it is, never a traceback; any malformed API answer is what the outcome
policy says (an unreadable status is asked for again, an unreadable submission answer is
uncertain, a dead URL is refreshed), never a crash: the run goes on, a job that cannot go
on ends with a recorded reason, and nothing is written outside the output folder.

Property-based with hypothesis for the pure parts (manifest loading, answer parsing);
end to end against the simulator's ``p_hostile`` knob for the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults import assert_invariants, listing, results, tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs import FAST_POLLING, out_dir, prompts, run_cli, run_engine

from runner.api.answers import TaskStatus, parse_status
from runner.api.client import ApiClient
from runner.api.limits import RequestGate
from runner.api.outcome import Outcome, Request
from runner.errors import ApiError, ManifestError
from runner.manifest.campaign import load_campaign
from runner.sim.config import HOSTILE_MODES
from runner.state.ledger import read_index
from runner.state.record import Phase

pytestmark = pytest.mark.faults

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Any JSON value (YAML is a superset), nested a little, with some long strings.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["", "../../etc/passwd", "x" * 600, "1.5s", "-3m", "2K", "{job_id}"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# Where a hostile value goes: a path of keys (an int is a list index) into a valid manifest.
PLACES = [
    ("name",),
    ("api",),
    ("api", "base_url"),
    ("api", "model"),
    ("api", "mode"),
    ("api", "provider"),
    ("api", "key_env"),
    ("api", "callback"),
    ("api", "simulator"),
    ("limits",),
    ("limits", "concurrency"),
    ("limits", "rate"),
    ("limits", "rate_period"),
    ("limits", "downloads"),
    ("polling",),
    ("polling", "interval"),
    ("polling", "timeout"),
    ("polling", "jitter"),
    ("retry", "attempts"),
    ("retry", "request_timeout"),
    ("defaults",),
    ("defaults", "resolution"),
    ("matrix",),
    ("matrix", "aspect_ratio"),
    ("jobs",),
    ("jobs", 0),
    ("jobs", 0, "id"),
    ("jobs", 0, "prompt"),
    ("jobs", 0, "max_images"),
    ("jobs", 0, "image_urls"),
    ("jobs", 0, "meta"),
    ("jobs", 0, "unknown_field"),
    ("output",),
    ("output", "dir"),
    ("output", "path"),
    ("budget", "max_images"),
    ("budget", "price_per_image"),
    ("a key nobody knows",),
]


def _valid() -> dict[str, Any]:
    return {
        "name": "hostile",
        "api": {"base_url": "embedded"},
        "polling": dict(FAST_POLLING),
        "jobs": [{"id": "one", "prompt": "a teapot"}, {"prompt": "a cup", "max_images": 2}],
        "output": {"dir": "out/hostile"},
    }


def _place(doc: Any, where: tuple[str | int, ...], value: Any) -> None:
    for key in where[:-1]:
        doc = doc.setdefault(key, {}) if isinstance(doc, dict) else doc[key]
    doc[where[-1]] = value


@SETTINGS
@given(where=st.sampled_from(PLACES), value=json_values, as_json=st.booleans())
def test_any_value_anywhere_in_a_manifest_is_valid_or_a_located_error(
    tmp_path: Path, where: tuple[str | int, ...], value: Any, as_json: bool
) -> None:
    """Loading never raises anything but ManifestError, whose message names the file or
    the key path, and nothing is written while loading."""
    doc = _valid()
    _place(doc, where, value)
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc))
    before = listing(tmp_path)
    try:
        load_campaign(path, {})
    except ManifestError as exc:
        assert exc.where, f"no location in {exc}"
        assert str(exc).strip()
    assert listing(tmp_path) == before


@SETTINGS
@given(lines=st.lists(json_values.map(json.dumps) | st.text(max_size=30), max_size=4))
def test_any_line_in_a_job_list_is_valid_or_a_located_error(
    tmp_path: Path, lines: list[str]
) -> None:
    """A JSONL job list with arbitrary lines: a ManifestError naming the file and line, or
    a campaign."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        load_campaign(path, {})
    except ManifestError as exc:
        assert "jobs.jsonl" in str(exc), str(exc)


@pytest.mark.parametrize(
    "text",
    [
        "jobs: [{prompt: 1}]\nlimits: {concurrency: -1}\n",
        "jobs: {prompt: a}\n",
        "- just a list\n",
        "jobs: [{prompt: a, max_images: 99999999999999999999999}]\n",
        "jobs: [{prompt: a}]\noutput: {path: '../../../{job_id}.{ext}'}\n",
        "\x00\xff: [",
    ],
)
async def test_hostile_manifest_exits_2_with_a_message_and_no_traceback(tmp_path, text):
    """The command line turns a hostile manifest into exit 2 and one clear line."""
    path = tmp_path / "m.yaml"
    path.write_text(text)
    code, err = await run_cli(path, "embedded", "--dry-run", key="")
    assert code == 2, err
    assert "Traceback" not in err and "m.yaml" in err


# -- API answers ---------------------------------------------------------------------------

answers = st.dictionaries(
    st.sampled_from(
        ["taskId", "state", "resultJson", "failCode", "failMsg", "createTime", "completeTime"]
    )
    | st.text(max_size=5),
    json_values
    | st.sampled_from(["success", "failed", "processing", "pending", "weird"])
    | st.builds(
        lambda urls: json.dumps({"resultUrls": urls}),
        st.lists(
            st.sampled_from(
                [
                    "https://cdn.example/a.png",
                    "file:///etc/passwd",
                    "ftp://h/x.png",
                    "http://h/../../etc/passwd",
                    "javascript:alert(1)",
                    "//no-scheme/x.png",
                    "http://" + "a" * 5000,
                ]
            )
            | json_values,
            max_size=3,
        ),
    ),
    max_size=6,
)


@SETTINGS
@given(data=answers, webhook=st.booleans())
def test_any_status_answer_parses_or_is_a_bad_answer(data: dict[str, Any], webhook: bool) -> None:
    """A status ``data`` object of any shape: a TaskStatus whose result URLs are all
    http(s) with a host, or BAD_ANSWER: asked for again when polled (RETRY: the task may
    be good), refused when it came as a webhook (PERMANENT)."""
    request = Request.WEBHOOK if webhook else Request.STATUS
    try:
        status = parse_status(data, "task_1", request)
    except ApiError as exc:
        assert exc.code == "BAD_ANSWER"
        assert exc.outcome is (Outcome.PERMANENT if webhook else Outcome.RETRY)
        return
    assert isinstance(status, TaskStatus)
    for url in status.result_urls:
        assert url.startswith(("http://", "https://")) and len(url) <= 4096


_CLIENT = ApiClient("http://127.0.0.1:9/api/v1", "key", "seedream-4-5", RequestGate(10, 1))


@SETTINGS
@given(
    raw=st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(lambda d: json.dumps({"code": 200, "data": d}).encode(), json_values),
    submit=st.booleans(),
)
def test_any_answer_body_is_data_or_a_bad_answer(raw: bytes, submit: bool) -> None:
    """Any 200 body: its ``data`` object, or BAD_ANSWER, never another exception; an
    unreadable answer to a submission is UNCERTAIN (a task may exist), to a poll RETRY."""
    request = Request.SUBMIT if submit else Request.STATUS
    try:
        data = _CLIENT._answer(request, 200, {}, raw)
    except ApiError as exc:
        assert exc.code == "BAD_ANSWER"
        assert exc.outcome is (Outcome.UNCERTAIN if submit else Outcome.RETRY)
        return
    assert isinstance(data, dict)


@pytest.mark.parametrize("mode", HOSTILE_MODES)
async def test_each_malformed_answer_is_retried_or_ends_its_job_with_a_reason(
    sim, manifest, tmp_path, mode
):
    """The simulator malforms half of the answers the ``mode`` way. A malformed status
    answer is asked for again, so every such job is done; a malformed submission answer
    is uncertain and sent again (past ``retry.uncertain`` the job waits for the next run);
    a URL that leads nowhere is refreshed from the task (the job is lost, URL_EXPIRED,
    only if the fresh ones lead nowhere too). Nothing is written outside the folder."""
    sim.config.update({"p_hostile": 0.5, "hostile": mode})
    # Few tries per poll: a poll whose tries all meet malformed answers leaves its task
    # live, to be polled again a moment later.
    path = manifest(prompts(6), limits={"concurrency": 6}, retry={"attempts": 3})
    before = listing(tmp_path)
    code, _ = await run_engine(path, sim.base_url)
    assert sim.stats.faults["hostile"] >= 1
    ended = assert_invariants(path, sim, 6, before, code)
    failed = [r for r in ended.values() if r["state"] == "failed"]
    assert not failed, "a malformed answer never fails a job"
    index, _ = read_index(out_dir(path))
    lost = [r for r in index.values() if r.phase is Phase.LOST]
    pending = [j for j, r in index.items() if r.phase is Phase.NEW]
    for rec in lost:
        assert mode == "url_traversal" and rec.fail_code == "URL_EXPIRED", rec
    # a job whose submissions kept getting malformed answers waits for the next run
    assert not pending or mode == "task_id"
    # A lost job has reached an end (paid, images gone): exit 1 like a failure.
    assert code == (4 if pending else 1 if lost else 0)
    assert len(ended) + len(pending) == 6
    assert {j for j, r in ended.items() if r["state"] == "lost"} == {
        j for j, rec in index.items() if rec.phase is Phase.LOST
    }
    if mode not in ("task_id", "url_traversal"):
        assert all(r["state"] == "done" for r in results(path).values())
    tally(f"hostile_{mode}", sim, failed=len(failed), lost=len(lost))
