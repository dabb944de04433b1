"""report.html: the demo's page in a real headless browser (every image loads, both charts
are drawn), untrusted strings escaped, and the gallery capped for huge campaigns."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from runs import image_files, out_dir, prompts, run_cli, run_engine

from runner.manifest.campaign import load_campaign
from runner.present import report
from runner.present.report import build_report
from runner.state.ledger import read_index

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").is_file():
        found = "/usr/bin/chromium"
    if found is None:
        how = "install Debian's chromium: apt-get update && apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"chromium is missing, so report.html cannot be checked; {how}")
        pytest.skip(f"chromium is missing; {how}")
    return found


def _dump_dom(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran (``#check``: load every lazy image first)."""
    result = subprocess.run(
        [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.resolve().as_uri() + "#check",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _body_attrs(dom: str) -> dict[str, str]:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, dom[:2000]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))


async def test_demo_report_shows_every_image_and_both_charts_in_chromium(tmp_path: Path):
    demo = Path(__file__).parent.parent / "manifests" / "demo.yaml"
    shutil.copy(demo, tmp_path / "demo.yaml")
    code, err = await run_cli(tmp_path / "demo.yaml", "embedded", key="")
    assert code == 0, err
    out = tmp_path / "out" / "demo"
    images = image_files(out)
    assert len(images) >= 20
    dom = _dump_dom(out / "report.html", tmp_path / "profile")
    body = _body_attrs(dom)
    assert body.get("data-checked") == "1", "the page's check script ran to the end"
    assert body["data-images"] == str(len(images)), "every image file is in the gallery"
    assert body["data-broken"] == "0", "no image is broken"
    for chart in ("chart-completion", "chart-throughput"):
        svg = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
        assert svg, f"{chart} is missing"
        assert "<rect" in svg.group(0), f"{chart} has no bars"
    html = (out / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "no external asset or link"


async def test_a_missing_image_is_reported_broken_by_the_check(tmp_path: Path, sim, manifest):
    """The check is not vacuous: an image file emptied after the run counts as broken."""
    path = manifest(prompts(3))
    assert (await run_engine(path, sim.base_url))[0] == 0
    victim = image_files(out_dir(path))[0]
    victim.write_bytes(b"")
    body = _body_attrs(_dump_dom(out_dir(path) / "report.html", tmp_path / "profile"))
    assert (body["data-images"], body["data-broken"]) == ("3", "1")


async def test_untrusted_prompts_meta_and_messages_are_escaped(sim, manifest):
    evil = '<script>alert("p")</script>'
    jobs = [
        {"id": "ok", "prompt": f"fine {evil}", "meta": {"note": '"><img src=x onerror=1>'}},
        {"id": "bad", "prompt": f"[fail:CONTENT_VIOLATION] {evil}"},
    ]
    path = manifest(jobs)
    assert (await run_engine(path, sim.base_url))[0] == 1
    html = (out_dir(path) / "report.html").read_text()
    assert evil not in html and "onerror=1>" not in html
    assert "&lt;script&gt;alert(&quot;p&quot;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1, "only the page's own script"
    assert "CONTENT_VIOLATION: 1 job" in html


async def test_gallery_is_capped_with_a_note_while_counts_cover_everything(
    sim, manifest, monkeypatch
):
    path = manifest(prompts(6), limits={"concurrency": 6})
    assert (await run_engine(path, sim.base_url))[0] == 0
    monkeypatch.setattr(report, "GALLERY_JOBS", 4)
    campaign = load_campaign(path)
    index, _ = read_index(campaign.output.dir)
    html = build_report(campaign, index)
    assert html.count('class="job"') == 4
    assert "The first 4 of 6 done jobs are shown" in html
    assert "<b>6</b>done" in html


async def test_completion_histogram_counts_every_task(sim, manifest):
    path = manifest(prompts(9), limits={"concurrency": 9})
    assert (await run_engine(path, sim.base_url))[0] == 0
    html = (out_dir(path) / "report.html").read_text()
    svg = re.search(r'<svg id="chart-completion".*?</svg>', html, re.S)
    assert svg
    counts = [float(x) for x in re.findall(r"<rect [^>]*><title>([\d.,]+)</title>", svg[0])]
    assert sum(counts) == 9
