"""A key given twice in one YAML mapping is an exit-2 error at the second one, naming its
key path and the first one's line; overrides through a merge key (``<<: *base``) are not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from runs import run_cli_sync

from runner.errors import ManifestError
from runner.manifest.campaign import load_campaign


def write(folder: Path, text: str) -> Path:
    path = folder / "campaign.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def cli(path: Path, *extra: str) -> tuple[int, str]:
    """Run ``python -m runner`` as a user would; return (exit code, stderr)."""
    code, _, err = run_cli_sync(path, *extra)
    return code, err


def test_two_jobs_lists_are_exit_2_naming_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: twice
        jobs:
          - prompt: a teapot
        budget: {price_per_image: 0.04}
        jobs:
          - prompt: a mug
        """,
    )
    code, err = cli(path, "--dry-run")
    assert code == 2
    assert f"{path}:5: jobs: 'jobs' is given twice in the same mapping (lines 2 and 5)" in err
    assert "Delete one, or merge the two into one" in err
    assert "Traceback" not in err


def test_a_repeated_prompt_in_a_job_is_exit_2_at_the_job_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        jobs:
          - prompt: a teapot
          - id: hero
            prompt: a mug
            aspect_ratio: "1:1"
            prompt: a cup
        """,
    )
    code, err = cli(path, "--dry-run")
    assert code == 2
    assert f"{path}:6: jobs[1].prompt: 'prompt' is given twice" in err
    assert "(lines 4 and 6)" in err
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("defaults:\n  resolution: 2K\n  resolution: 4K\njobs: [{prompt: a}]\n",
         ":3: defaults.resolution"),
        ("matrix:\n  aspect_ratio: ['1:1']\n  aspect_ratio: ['16:9']\njobs: [{prompt: a}]\n",
         ":3: matrix.aspect_ratio"),
        ("api:\n  model: seedream-4-5\n  model: flux-2\njobs: [{prompt: a}]\n", ":3: api.model"),
        ("api: {callback: {listen: '127.0.0.1:1', listen: '127.0.0.1:2'}}\njobs: [{prompt: a}]\n",
         ":1: api.callback.listen"),
        ("limits: {rate: 10}\nlimits: {rate: 20}\njobs: [{prompt: a}]\n", ":2: limits"),
        ("jobs: [{prompt: a, meta: {sku: 1, sku: 2}}]\n", ":1: jobs[0].meta.sku"),
        ("output:\n  dir: a\n  dir: b\njobs: [{prompt: a}]\n", ":3: output.dir"),
        ("name: a\nname: b\njobs: [{prompt: a}]\n", ":2: name"),
    ],
)  # fmt: skip
def test_duplicate_keys_anywhere_are_named_by_line_and_key_path(
    tmp_path: Path, text: str, where: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}{where}"
    assert "is given twice in the same mapping" in str(caught.value)


def test_a_flow_mapping_repeat_names_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: [{prompt: a, max_images: 1, max_images: 2}]\n")
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}:1: jobs[0].max_images"
    assert "(line 1, columns 20 and 35)" in str(caught.value)


def test_keys_equal_as_values_count_as_one_key(tmp_path: Path) -> None:
    """``1`` and ``true`` are the same mapping key once loaded: the same silent loss."""
    path = write(tmp_path, "api: {model: flux-2}\njobs: [{prompt: a, s: {1: x, true: y}}]\n")
    with pytest.raises(ManifestError, match="written '1' and 'true'"):
        load_campaign(path)


def test_merge_key_overrides_are_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: &base
          resolution: 2K
          aspect_ratio: "1:1"
        jobs:
          - <<: *base
            prompt: a teapot
            aspect_ratio: "16:9"
          - {<<: *base, prompt: a mug, resolution: 4K}
        """,
    )
    jobs = list(load_campaign(path).jobs())
    assert [(j.input["resolution"], j.input["aspect_ratio"]) for j in jobs] == [
        ("2K", "16:9"),
        ("4K", "1:1"),
    ]


def test_an_override_inside_a_merged_mapping_is_still_allowed(tmp_path: Path) -> None:
    """A mapping that itself merges and overrides, merged again elsewhere (nested merges)."""
    path = write(
        tmp_path,
        """
        api: {model: flux-2}
        defaults:
          style: &inner {<<: &base {tone: warm, grain: 1}, grain: 2}
        jobs:
          - {prompt: a, look: {<<: *inner, tone: cold}}
          - {prompt: b, look: *inner}
        """,
    )
    jobs = list(load_campaign(path).jobs())
    assert jobs[0].input["look"] == {"tone": "cold", "grain": 2}
    assert jobs[1].input["look"] == {"tone": "warm", "grain": 2}


def test_a_repeat_inside_a_merged_mapping_is_still_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        api: {model: flux-2}
        defaults:
          style: &inner {<<: {tone: warm}, grain: 2, grain: 3}
        jobs:
          - {prompt: a, look: {<<: *inner, tone: cold}}
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}:3: defaults.style.grain"


def test_a_key_repeated_in_a_jsonl_line_is_exit_2_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "first"}\n'
        '{"id": "x", "prompt": "say \\"hi\\": ok"}\n'  # a ":" inside a string is fine
        '{"id": "b", "prompt": "first", "prompt": "second"}\n'
    )
    code, err = cli(path, "--dry-run")
    assert code == 2, err
    assert "jobs.jsonl:3" in err and "'prompt' is given twice" in err
