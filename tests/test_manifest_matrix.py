"""Matrix rules: a job may not set a field its matrix varies (exit 2 naming the job's key and
the matrix axis); a job's own ``matrix:`` replaces the campaign's (``{}`` for none)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from runs import run_cli_sync

from runner.errors import ManifestError
from runner.manifest.campaign import load_campaign
from runner.manifest.jobspec import Job


def write(folder: Path, text: str) -> Path:
    path = folder / "campaign.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def jobs_of(folder: Path, settings: dict[str, Any]) -> list[Job]:
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    campaign = load_campaign(path)
    jobs = list(campaign.jobs())
    assert len(jobs) == campaign.job_count
    return jobs


def error_of(folder: Path, settings: dict[str, Any]) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        jobs_of(folder, settings)
    return caught.value


def cli(path: Path, *extra: str) -> tuple[int, str]:
    """Run ``python -m runner`` as a user would; return (exit code, stderr)."""
    code, _, err = run_cli_sync(path, *extra)
    return code, err


def test_a_job_setting_a_matrix_key_is_exit_2_naming_the_key_and_the_axis(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        matrix:
          aspect_ratio: ["1:1", "16:9"]
        jobs:
          - prompt: a teapot
          - id: banner
            prompt: a wide banner
            aspect_ratio: "21:9"
        """,
    )
    code, err = cli(path, "--dry-run")
    assert code == 2
    assert f"{path}:7: jobs[1].aspect_ratio: aspect_ratio is varied by the campaign's matrix" in err
    assert f"({path}:2: matrix.aspect_ratio)" in err
    assert "remove aspect_ratio from this job, or give the job its own matrix" in err
    assert "matrix: {} for none" in err


def test_a_job_with_its_own_prompt_under_a_prompt_matrix_is_exit_2(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        matrix:
          prompt: [a teapot, a mug]
        jobs:
          - aspect_ratio: "1:1"
          - prompt: a cup
        """,
    )
    code, err = cli(path, "--dry-run")
    assert code == 2
    assert f"{path}:5: jobs[1].prompt: prompt is varied by the campaign's matrix" in err


def test_a_jsonl_line_setting_a_matrix_key_is_named_by_its_line(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_bytes(
        orjson.dumps({"prompt": "a"}) + b"\n" + orjson.dumps({"prompt": "b", "max_images": 3})
    )
    err = error_of(tmp_path, {"matrix": {"max_images": [1, 2]}, "jobs_file": "prompts.jsonl"})
    assert err.where == f"{tmp_path / 'prompts.jsonl'}:2: max_images"
    assert "max_images is varied by the campaign's matrix" in str(err)


def test_a_default_for_a_matrix_key_is_overridden_by_the_matrix(tmp_path: Path) -> None:
    jobs = jobs_of(
        tmp_path,
        {
            "defaults": {"aspect_ratio": "9:16", "resolution": "4K"},
            "matrix": {"aspect_ratio": ["1:1", "16:9"]},
            "jobs": [{"prompt": "a"}],
        },
    )
    assert [(j.input["aspect_ratio"], j.input["resolution"]) for j in jobs] == [
        ("1:1", "4K"),
        ("16:9", "4K"),
    ]


def test_a_jobs_own_matrix_replaces_the_campaigns(tmp_path: Path) -> None:
    jobs = jobs_of(
        tmp_path,
        {
            "matrix": {"aspect_ratio": ["1:1", "16:9"]},
            "jobs": [
                {"id": "plain", "prompt": "a"},
                {"id": "banner", "prompt": "b", "aspect_ratio": "21:9",
                 "matrix": {"resolution": ["2K", "4K"]}},
                {"id": "once", "prompt": "c", "aspect_ratio": "9:16", "matrix": {}},
            ],
        },
    )  # fmt: skip
    assert [(j.id, j.input.get("aspect_ratio"), j.input.get("resolution")) for j in jobs] == [
        ("plain.1-1", "1:1", None),
        ("plain.16-9", "16:9", None),
        ("banner.2K", "21:9", "2K"),
        ("banner.4K", "21:9", "4K"),
        ("once", "9:16", None),
    ]
    assert all("matrix" not in j.input for j in jobs), "matrix is not an input field"


def test_a_jsonl_line_can_carry_its_own_matrix(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_bytes(
        orjson.dumps({"id": "x", "prompt": "a", "matrix": {"max_images": [2, 3]}}) + b"\n"
    )
    jobs = jobs_of(tmp_path, {"matrix": {"max_images": [1]}, "jobs_file": "prompts.jsonl"})
    assert [(j.id, j.max_images) for j in jobs] == [("x.2", 2), ("x.3", 3)]


def test_a_key_both_set_and_in_the_jobs_own_matrix_is_an_error(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        {"jobs": [{"prompt": "a", "resolution": "2K", "matrix": {"resolution": ["2K", "4K"]}}]},
    )
    assert err.where.endswith(": jobs[0].resolution")
    assert "also varied by this job's own matrix; remove one of them" in str(err)


@pytest.mark.parametrize(
    ("matrix", "where", "message"),
    [
        ({"resolution": ["2K", "5K"]}, "jobs[0].matrix.resolution[1]", "use one of 2K, 4K"),
        ({"resolution": []}, "jobs[0].matrix.resolution", "non-empty list"),
        ("4K", "jobs[0].matrix", "must map input fields to lists"),
        ({"meta": [{}]}, "jobs[0].matrix", "cannot vary"),
    ],
)
def test_a_bad_job_matrix_is_named_below_the_job(
    tmp_path: Path, matrix: Any, where: str, message: str
) -> None:
    err = error_of(tmp_path, {"jobs": [{"prompt": "a", "matrix": matrix}]})
    assert err.where.endswith(where) and message in str(err)


def test_matrix_cannot_have_a_default(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"defaults": {"matrix": {}}, "jobs": [{"prompt": "a"}]})
    assert err.where.endswith(": defaults.matrix") and "set it on each job" in str(err)
