"""image_path: every output file is named by the template and stays inside output.dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.manifest.jobspec import Job
from runner.manifest.naming import Output, image_path


def _job(job_id: str) -> Job:
    return Job(id=job_id, input={"prompt": "x"}, meta={}, fingerprint="", where="test")


def test_default_template_names_images_by_job_and_index(tmp_path: Path) -> None:
    out = Output(dir=tmp_path)
    assert (
        image_path(out, _job("hero.16-9"), 3, "png", "task_1")
        == tmp_path / "images/hero.16-9/3.png"
    )


def test_template_with_task_id_and_zero_padded_index(tmp_path: Path) -> None:
    out = Output(dir=tmp_path, path_template="{task_id}/{job_id}-{index:03d}.{ext}")
    assert image_path(out, _job("a"), 7, "webp", "task_9") == tmp_path / "task_9/a-007.webp"


def test_task_id_is_not_checked_when_the_template_does_not_use_it(tmp_path: Path) -> None:
    assert image_path(Output(dir=tmp_path), _job("a"), 0, "png", "") == tmp_path / "images/a/0.png"


@pytest.mark.parametrize(
    ("job_id", "ext", "task_id"),
    [
        ("..", "png", "t"),
        ("a/b", "png", "t"),
        ("", "png", "t"),
        ("a", "../png", "t"),
        ("a", "png", "../../etc"),
        ("a", "png", "x\\y"),
        ("a", "png", ""),
    ],
)
def test_values_that_would_change_the_folder_are_refused(
    tmp_path: Path, job_id: str, ext: str, task_id: str
) -> None:
    out = Output(dir=tmp_path, path_template="{task_id}/{job_id}/{index}.{ext}")
    with pytest.raises(ValueError):
        image_path(out, _job(job_id), 0, ext, task_id)


@pytest.mark.parametrize(
    "template",
    ["../{job_id}/{index}.{ext}", "/etc/{job_id}{index}", "a/../../{job_id}/{index}", "{ext}"],
)
def test_a_template_that_escapes_output_dir_is_refused_even_unvalidated(
    tmp_path: Path, template: str
) -> None:
    out = Output(dir=tmp_path / "out", path_template=template)
    with pytest.raises(ValueError):
        image_path(out, _job("job"), 0, "..", "t")
    if template != "{ext}":
        with pytest.raises(ValueError):
            image_path(out, _job("job"), 0, "png", "t")


def test_result_is_always_inside_output_dir(tmp_path: Path) -> None:
    out = Output(dir=tmp_path / "out", path_template="x/./{job_id}/../{job_id}/{index}.{ext}")
    path = image_path(out, _job("j1"), 2, "png", "t")
    assert path == tmp_path / "out/x/j1/2.png"
    assert path.is_relative_to(out.dir)
