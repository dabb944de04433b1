"""The user documentation keeps up with the code: every CLI option and every manifest key
has its row in docs/, links point at files of the repository, and the README's examples
are what the demo really prints."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.cli import _parser
from runner.errors import ManifestError
from runner.manifest import settings
from runner.manifest.campaign import load_campaign
from runner.manifest.fields import JOB_KEYS, SEEDREAM_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"


def _rows(paths: list[Path]) -> list[str]:
    """The first cell of every Markdown table row."""
    cells = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("|") and line.count("|") >= 3:
                cells.append(re.split(r"(?<!\\)\|", line)[1])  # "text\|json" is one cell
    return cells


def _has_row(cells: list[str], name: str) -> bool:
    """A table row whose first cell names ``name`` in backticks (``--drain S``, not
    ``--drain-x``; ``api.callback``, not ``api.callback.listen``)."""
    pattern = re.compile(r"`" + re.escape(name) + r"(?![\w.-])")
    return any(pattern.search(cell) for cell in cells)


def cli_options() -> list[str]:
    return [s for action in _parser()._actions for s in action.option_strings]


def _allowed(tmp_path: Path, section: tuple[str, ...]) -> set[str]:
    """The keys the manifest loader accepts in ``section``, read from its own error
    for an unknown key (so a key added to the code is found however it was added)."""
    doc: dict[str, object] = {"jobs": [{"prompt": "x"}]}
    node = doc
    for key in section:
        node = node.setdefault(key, {})  # type: ignore[assignment]
    node["zz_not_a_key"] = 1
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    found = re.search(r"allowed: (.*)$", str(caught.value))
    assert found, str(caught.value)
    return {k.strip() for k in found[1].split(",")}


def manifest_keys(tmp_path: Path) -> list[str]:
    """Every settings key as a dotted path, from runner.manifest.settings' tables and from what
    the loader accepts in each section (top level, api, api.callback, api.simulator, ...),
    plus the job fields."""
    tables = {
        ("api",): settings._API,
        ("limits",): settings._LIMITS,
        ("polling",): settings._POLLING,
        ("retry",): settings._RETRY,
        ("budget",): settings._BUDGET,
    }
    sections = [(), ("api",), ("api", "callback"), ("api", "simulator"), ("limits",),
                ("polling",), ("retry",), ("output",), ("budget",)]  # fmt: skip
    keys: set[str] = set()
    for section in sections:
        names = _allowed(tmp_path, section) | set(tables.get(section, ()))
        keys |= {".".join((*section, name)) for name in names}
    assert {"api.callback.public_url", "output.path", "retry.attempts", "jobs_file"} <= keys
    return sorted(keys)


def test_every_cli_option_has_a_row_in_the_docs():
    cells = _rows(DOCS)
    missing = [opt for opt in cli_options() if not _has_row(cells, opt)]
    assert not missing, f"options of runner.cli without a row in docs/*.md: {missing}"


def test_every_cli_option_is_in_the_readme_options_table():
    cells = _rows([README])
    missing = [
        opt for opt in cli_options() if opt not in ("-h", "--help") and not _has_row(cells, opt)
    ]
    assert not missing, f"options missing from the README's table: {missing}"


def test_every_manifest_key_has_a_row_in_the_docs(tmp_path):
    cells = _rows(DOCS)
    missing = [key for key in manifest_keys(tmp_path) if not _has_row(cells, key)]
    assert not missing, f"manifest keys without a row in docs/*.md: {missing}"


def test_every_job_field_has_a_row_in_the_docs():
    cells = _rows(DOCS)
    missing = [f for f in (*JOB_KEYS, *SEEDREAM_FIELDS) if not _has_row(cells, f)]
    assert not missing, f"job fields without a row in docs/*.md: {missing}"


def test_the_check_sees_an_undocumented_key(tmp_path):
    """The check above is not vacuous: a key in no row is reported."""
    cells = _rows(DOCS)
    assert _has_row(cells, "limits.rate") and _has_row(cells, "--shard")
    assert not _has_row(cells, "limits.rate_limit") and not _has_row(cells, "--shar")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_links_point_at_files_and_headings_of_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text and "/work/" not in text
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an outside address (https:, mailto:)
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.is_file(), f"{doc.name} links to {target}, which is not in the repository"
        assert ROOT in dest.parents
        if anchor:
            assert anchor in _anchors(dest), f"{doc.name}: no heading for #{anchor} in {dest.name}"


def _block_after(text: str, first_line: str) -> str:
    """The fenced block whose first line is ``first_line``, without the fences."""
    match = re.search(r"^```\n(" + re.escape(first_line) + r"\n.*?)^```", text, re.S | re.M)
    assert match, f"no block starting with {first_line!r}"
    return match[1]


def _runner(manifest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", str(manifest), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _images_on_disk(text: str) -> str:
    """Image counts and money vary with the model's choices (sequential generation)."""
    text = re.sub(r"records them\): \d+", "records them): N", text)
    return re.sub(r"paid so far: \d+ images, \$[\d.]+", "paid so far: N images, $X", text)


def test_readme_dry_run_and_status_examples_are_what_the_demo_prints(tmp_path):
    """The README's --dry-run and --status blocks, against a copy of the demo: the same
    lines (but for the output path and the image count, which the model varies)."""
    readme = README.read_text()
    demo = tmp_path / "demo.yaml"
    shutil.copy(ROOT / "manifests" / "demo.yaml", demo)

    dry = _block_after(readme, "$ python -m runner manifests/demo.yaml --dry-run")
    got = _runner(demo, "--dry-run")
    assert got.returncode == 0, got.stderr
    expected = re.sub(r"^output: .*$", f"output: {tmp_path}/out/demo", dry, flags=re.M)
    assert "$ python -m runner manifests/demo.yaml --dry-run\n" + got.stdout == expected

    run = _runner(demo, "--no-progress")
    assert run.returncode == 0, run.stderr
    status = _block_after(readme, "$ python -m runner manifests/demo.yaml --status")
    got = _runner(demo, "--status")
    assert got.returncode == 0, got.stderr
    assert _images_on_disk("$ python -m runner manifests/demo.yaml --status\n" + got.stdout) == (
        _images_on_disk(status)
    )


def test_readme_failure_example_is_what_status_prints(tmp_path):
    """The README's job with ``[fail:CONTENT_VIOLATION]``, added to the demo: exit 1, and
    --status ends with the README's lines."""
    readme = README.read_text()
    job = re.search(r"^```yaml\n(  - id: swimsuit\n.*?)^```", readme, re.S | re.M)
    assert job, "the README shows the job it adds"
    text = (ROOT / "manifests" / "demo.yaml").read_text()
    assert "\noutput:" in text
    demo = tmp_path / "demo.yaml"
    demo.write_text(text.replace("\noutput:", "\n" + job[1] + "output:", 1))
    run = _runner(demo, "--no-progress")
    assert run.returncode == 1, run.stderr
    tail = _block_after(readme, "  done         24")
    got = _runner(demo, "--status")
    assert got.stdout.endswith(tail), got.stdout
