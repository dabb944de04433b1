"""Jobs: field rules, defaults and matrix, ids, fingerprints, duplicates, JSONL lines."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from runner.errors import ManifestError
from runner.manifest.campaign import Campaign, load_campaign
from runner.manifest.fields import ASPECT_RATIOS
from runner.manifest.jobspec import Job

URL = "https://example.com/ref.jpg"


def write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def jsonl(folder: Path, rows: list[Any], name: str = "prompts.jsonl") -> Path:
    path = folder / name
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def campaign_of(folder: Path, settings: dict[str, Any]) -> Campaign:
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return load_campaign(path)


def jobs_of(folder: Path, settings: dict[str, Any]) -> list[Job]:
    campaign = campaign_of(folder, settings)
    jobs = list(campaign.jobs())
    assert len(jobs) == campaign.job_count
    assert sum(job.max_images for job in jobs) == campaign.image_count
    return jobs


def error_of(folder: Path, settings: dict[str, Any]) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        campaign_of(folder, settings)
    return caught.value


def canonical_fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


# ------------------------------------------------------------------- fields and defaults


def test_final_input_fills_mode_and_max_images(tmp_path: Path) -> None:
    text, image = jobs_of(
        tmp_path, {"jobs": [{"prompt": "a"}, {"prompt": "b", "image_urls": [URL]}]}
    )
    assert text.input == {"prompt": "a", "mode": "text-to-image", "max_images": 1}
    assert image.input["mode"] == "image-to-image" and image.input["max_images"] == 1
    assert text.meta == {} and text.max_images == 1


def test_every_seedream_field_at_its_limits_is_accepted(tmp_path: Path) -> None:
    job = {
        "prompt": "p" * 5000,
        "mode": "image-to-image",
        "image_urls": [f"http://example.com/{i}.png" for i in range(14)],
        "max_images": 10,
        "resolution": "4K",
        "aspect_ratio": "21:9",
        "sequential_image_generation": "auto",
    }
    (result,) = jobs_of(tmp_path, {"jobs": [job]})
    assert result.input == job and result.max_images == 10


def test_unquoted_aspect_ratio_in_yaml_stays_a_ratio(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs:\n  - prompt: x\n    aspect_ratio: 16:9\n")
    (job,) = load_campaign(path).jobs()
    assert job.input["aspect_ratio"] == "16:9"


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("prompt", 5, "string of 1-5000 characters"),
        ("prompt", None, "string of 1-5000 characters"),
        ("prompt", "", "1-5000 characters"),
        ("prompt", "   ", "not blank"),
        ("prompt", "p" * 5001, "1-5000 characters"),
        ("mode", "edit", "text-to-image, image-to-image"),
        ("image_urls", [], "1-14 http(s) URLs"),
        ("image_urls", URL, "1-14 http(s) URLs"),
        ("image_urls", [URL] * 15, "1-14 http(s) URLs"),
        ("max_images", 0, "integer 1-10"),
        ("max_images", 11, "integer 1-10"),
        ("max_images", True, "integer 1-10"),
        ("max_images", "2", "integer 1-10"),
        ("max_images", 2.0, "integer 1-10"),
        ("resolution", "8K", "2K, 4K"),
        ("resolution", "2k", "2K, 4K"),
        ("aspect_ratio", 1.5, "1:1, 2:3"),
        ("sequential_image_generation", "on", "disabled, auto"),
        ("id", "has space", "A-Z a-z 0-9 . _ -"),
        ("id", "", "A-Z a-z 0-9 . _ -"),
        ("id", "x" * 129, "1-128 characters"),
        ("id", 5, "1-128 characters"),
        ("id", "..", "not . or .."),
        ("id", "a\n", "1-128 characters"),
        ("meta", "x", "meta must be a mapping"),
        ("meta", [1], "meta must be a mapping"),
    ],
)
def test_bad_job_fields_name_the_key_path_and_what_is_allowed(
    tmp_path: Path, field: str, value: Any, allowed: str
) -> None:
    job = {"prompt": "ok", field: value}
    err = error_of(tmp_path, {"name": "x", "jobs": [{"prompt": "fine"}, job]})
    assert re.search(rf"campaign\.yaml:\d+: jobs\[1\]\.{field}$", err.where)
    assert allowed in str(err)


def test_aspect_ratio_message_lists_the_allowed_ratios(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"jobs": [{"prompt": "a"}, {"prompt": "b", "aspect_ratio": "5:4"}]})
    assert str(err).endswith(
        "jobs[1].aspect_ratio: '5:4' is not allowed; use one of " + ", ".join(ASPECT_RATIOS)
    )


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "example.com/a.png", 5, "http://"])
def test_image_urls_must_be_http_urls_and_the_bad_one_is_named(tmp_path: Path, url: Any) -> None:
    err = error_of(tmp_path, {"jobs": [{"prompt": "x", "image_urls": [URL, url]}]})
    assert err.where.endswith("jobs[0].image_urls[1]") and "http(s) URL" in str(err)


def test_unknown_field_suggests_the_close_name_and_lists_valid_ones(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"jobs": [{"prompt": "x", "aspct_ratio": "1:1"}]})
    assert err.where.endswith("jobs[0].aspct_ratio")
    assert "did you mean 'aspect_ratio'?" in str(err)
    assert "id, meta, matrix, prompt, mode, image_urls, max_images, resolution" in str(err)


def test_prompt_is_required(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"jobs": [{"aspect_ratio": "1:1"}]})
    assert err.where.endswith("jobs[0]") and "prompt is required" in str(err)


def test_image_to_image_without_image_urls_is_an_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"jobs": [{"prompt": "x", "mode": "image-to-image"}]})
    assert "needs image_urls" in str(err)


def test_text_to_image_with_image_urls_is_an_error(tmp_path: Path) -> None:
    err = error_of(
        tmp_path, {"jobs": [{"prompt": "x", "mode": "text-to-image", "image_urls": [URL]}]}
    )
    assert "only used by mode image-to-image" in str(err)


@pytest.mark.parametrize("job", [5, "a prompt", ["prompt", "x"], None])
def test_a_job_must_be_a_mapping(tmp_path: Path, job: Any) -> None:
    err = error_of(tmp_path, {"jobs": [job]})
    assert err.where.endswith("jobs[0]") and "not a job" in str(err)


def test_meta_is_copied_and_must_be_plain_json(tmp_path: Path) -> None:
    (job,) = jobs_of(tmp_path, {"jobs": [{"prompt": "x", "meta": {"sku": "TP-01", "n": [1]}}]})
    assert job.meta == {"sku": "TP-01", "n": [1]}
    path = write(tmp_path, "jobs:\n  - prompt: x\n    meta: {when: 2024-01-01}\n")
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.meta\.when: .*quote dates"):
        load_campaign(path)


@pytest.mark.parametrize(
    "text",
    [
        "jobs:\n  - prompt: x\n    meta: &m {a: *m}\n",
        "jobs:\n  - &j {prompt: x, meta: {a: [*j]}}\n",
        "api: {model: flux-2}\njobs:\n  - prompt: x\n    z: &l [*l]\n",
    ],
)
def test_self_referencing_yaml_anchors_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ManifestError, match="nested more than 100 levels"):
        load_campaign(write(tmp_path, text))


def test_defaults_are_merged_under_every_job(tmp_path: Path) -> None:
    a, b = jobs_of(
        tmp_path,
        {
            "defaults": {"resolution": "4K", "aspect_ratio": "1:1", "max_images": 2},
            "jobs": [{"prompt": "a"}, {"prompt": "b", "aspect_ratio": "9:16"}],
        },
    )
    assert a.input["resolution"] == b.input["resolution"] == "4K"
    assert (a.input["aspect_ratio"], b.input["aspect_ratio"]) == ("1:1", "9:16")
    assert a.max_images == 2


@pytest.mark.parametrize(
    ("defaults", "where", "message"),
    [
        ({"id": "x"}, "defaults.id", "set it on each job"),
        ({"meta": {}}, "defaults.meta", "set it on each job"),
        ({"resolutoin": "2K"}, "defaults.resolutoin", "did you mean 'resolution'?"),
        ({"aspect_ratio": "5:4"}, "defaults.aspect_ratio", "1:1, 2:3"),
        ("4K", "defaults", "mapping of input fields"),
    ],
)
def test_bad_defaults_are_named(tmp_path: Path, defaults: Any, where: str, message: str) -> None:
    err = error_of(tmp_path, {"defaults": defaults, "jobs": [{"prompt": "x"}]})
    assert err.where.endswith(where) and message in str(err)


# ---------------------------------------------------------------------------------- matrix


def test_matrix_expands_each_job_over_the_cross_product_with_suffixed_ids(tmp_path: Path) -> None:
    jobs = jobs_of(
        tmp_path,
        {
            "defaults": {"resolution": "2K", "aspect_ratio": "1:1"},
            "matrix": {"aspect_ratio": ["1:1", "16:9"], "resolution": ["2K", "4K"]},
            "jobs": [{"id": "hero", "prompt": "a"}, {"prompt": "b"}],
        },
    )
    assert len(jobs) == 8
    assert [j.id for j in jobs[:4]] == [
        "hero.1-1.2K",
        "hero.1-1.4K",
        "hero.16-9.2K",
        "hero.16-9.4K",
    ]
    assert [(j.input["aspect_ratio"], j.input["resolution"]) for j in jobs[4:]] == [
        ("1:1", "2K"), ("1:1", "4K"), ("16:9", "2K"), ("16:9", "4K"),
    ]  # fmt: skip
    assert all(re.fullmatch(r"j[0-9a-f]{16}", j.id) for j in jobs[4:])
    assert len({j.id for j in jobs}) == 8


def test_matrix_suffixed_id_stays_within_128_allowed_characters(tmp_path: Path) -> None:
    base = "x" * 125
    jobs = jobs_of(
        tmp_path,
        {"matrix": {"aspect_ratio": ["16:9", "21:9"]}, "jobs": [{"id": base, "prompt": "a"}]},
    )
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,128}", j.id) for j in jobs)
    assert len({j.id for j in jobs}) == 2


@pytest.mark.parametrize(
    ("matrix", "where", "message"),
    [
        ("16:9", "matrix", "must map input fields to lists"),
        ({"aspect_ratio": "16:9"}, "matrix.aspect_ratio", "non-empty list"),
        ({"aspect_ratio": []}, "matrix.aspect_ratio", "non-empty list"),
        ({"aspect_ratio": ["1:1", "5:4"]}, "matrix.aspect_ratio[1]", "1:1, 2:3"),
        ({"aspect_ratio": ["1:1", "1:1"]}, "matrix.aspect_ratio[1]", "listed twice"),
        ({"image_urls": [[URL], ["nope"]]}, "matrix.image_urls[1][0]", "http(s) URL"),
        ({"aspct_ratio": ["1:1"]}, "matrix.aspct_ratio", "did you mean 'aspect_ratio'?"),
        ({"id": ["a", "b"]}, "matrix", "cannot vary"),
        ({"prompt": [str(i) for i in range(101)], "max_images": list(range(1, 11)),
          "aspect_ratio": list(ASPECT_RATIOS), "resolution": ["2K", "4K"]},
         "matrix", "more than 10000 variants"),
    ],
)  # fmt: skip
def test_bad_matrix_is_named(tmp_path: Path, matrix: Any, where: str, message: str) -> None:
    err = error_of(tmp_path, {"matrix": matrix, "jobs": [{"prompt": "x"}]})
    assert err.where.endswith(where) and message in str(err)


# --------------------------------------------------------------- ids, fingerprints, dupes


def test_derived_id_comes_from_the_fingerprint_of_the_final_input(tmp_path: Path) -> None:
    (job,) = jobs_of(tmp_path, {"jobs": [{"prompt": "x", "resolution": "4K"}]})
    assert job.fingerprint == canonical_fingerprint(job.input)
    assert job.id == "j" + job.fingerprint[:16]


def test_derived_id_is_stable_when_other_lines_change(tmp_path: Path) -> None:
    target = {"prompt": "the one", "aspect_ratio": "3:2"}
    first = load_campaign(jsonl(tmp_path, [{"prompt": "a"}, target], "one.jsonl"))
    second = load_campaign(
        jsonl(
            tmp_path,
            [{"prompt": "b"}, {"prompt": "c"}, {"aspect_ratio": "3:2", **target}],
            "two.jsonl",
        )
    )
    id_one = [j.id for j in first.jobs() if j.input["prompt"] == "the one"]
    id_two = [j.id for j in second.jobs() if j.input["prompt"] == "the one"]
    assert id_one == id_two and len(id_one) == 1


def test_changed_content_under_the_same_id_changes_the_fingerprint(tmp_path: Path) -> None:
    (before,) = jobs_of(tmp_path, {"jobs": [{"id": "hero", "prompt": "teapot"}]})
    (after,) = jobs_of(tmp_path, {"jobs": [{"id": "hero", "prompt": "teapot", "resolution": "4K"}]})
    (meta_only,) = jobs_of(
        tmp_path, {"jobs": [{"id": "hero", "prompt": "teapot", "meta": {"a": 1}}]}
    )
    assert before.id == after.id == "hero"
    assert before.fingerprint != after.fingerprint
    assert meta_only.fingerprint == before.fingerprint  # meta is not sent, so it is not content


def test_identical_jobs_collapse_into_one_with_a_warning_naming_both(tmp_path: Path) -> None:
    jsonl(tmp_path, [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}])
    campaign = campaign_of(
        tmp_path,
        {"jobs": [{"id": "hero", "prompt": "x"}, {"id": "hero", "prompt": "x"}, {"prompt": "same"}],
         "jobs_file": "prompts.jsonl"},
    )  # fmt: skip
    jobs = list(campaign.jobs())
    assert campaign.job_count == len(jobs) == 3
    assert [j.where.split(": ")[-1] for j in jobs[:2]] == ["jobs[0]", "jobs[2]"]
    assert jobs[2].where.endswith("prompts.jsonl:2")
    assert len(campaign.warnings) == 3
    assert "jobs[1]" in campaign.warnings[0] and "jobs[0]" in campaign.warnings[0]
    assert "prompts.jsonl:1" in campaign.warnings[1] and "jobs[2]" in campaign.warnings[1]
    assert "prompts.jsonl:3" in campaign.warnings[2] and "jobs[2]" in campaign.warnings[2]


def test_many_duplicates_give_a_bounded_number_of_warnings(tmp_path: Path) -> None:
    campaign = load_campaign(jsonl(tmp_path, [{"prompt": "same"}] * 100))
    assert campaign.job_count == 1
    assert len(campaign.warnings) == 21 and "79 more" in campaign.warnings[-1]


def test_different_jobs_under_one_explicit_id_is_an_error_naming_both(tmp_path: Path) -> None:
    jsonl(tmp_path, [{"prompt": "a"}, {"id": "hero", "prompt": "different"}])
    err = error_of(
        tmp_path, {"jobs": [{"id": "hero", "prompt": "x"}], "jobs_file": "prompts.jsonl"}
    )
    assert err.where.endswith("prompts.jsonl:2")
    assert "'hero'" in str(err) and "jobs[0]" in str(err)


def test_matrix_ids_colliding_after_sanitising_is_an_error(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        {"api": {"model": "other"}, "matrix": {"style": ["a:b", "a-b"]},
         "jobs": [{"id": "x", "prompt": "p"}]},
    )  # fmt: skip
    assert "'x.a-b'" in str(err)


# ----------------------------------------------------------------------------------- JSONL


def test_jsonl_job_list_uses_defaults_and_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n\n   \n{"prompt": "b", "id": "two"}\r\n')
    campaign = load_campaign(path)
    assert campaign.name == "prompts" and campaign.output.dir == tmp_path / "out" / "prompts"
    assert [(j.id, j.where) for j in campaign.jobs()][1] == ("two", f"{path}:4")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"prompt": "x",}', "not valid JSON"),
        (b'{"prompt": "x"', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a job"),
        (b"42", "not a job"),
        (b'"prompt"', "not a job"),
        (b"null", "not a job"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n\n' + line + b'\n{"prompt": "later"}\n')
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}:3" and message in str(caught.value)


def test_jsonl_field_error_names_line_and_field(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"prompt": "ok"}, {"prompt": "x", "aspect_ratio": "5:4"}])
    with pytest.raises(ManifestError) as caught:
        load_campaign(path)
    assert caught.value.where == f"{path}:2: aspect_ratio"


def test_empty_jsonl_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ManifestError, match="no jobs"):
        load_campaign(path)


def test_jobs_file_lines_come_after_jobs_and_get_defaults_and_matrix(tmp_path: Path) -> None:
    jsonl(tmp_path, [{"id": "line", "prompt": "from file"}])
    jobs = jobs_of(
        tmp_path,
        {"defaults": {"resolution": "4K"}, "matrix": {"max_images": [1, 2]},
         "jobs": [{"id": "yaml", "prompt": "inline"}], "jobs_file": "prompts.jsonl"},
    )  # fmt: skip
    assert [j.id for j in jobs] == ["yaml.1", "yaml.2", "line.1", "line.2"]
    assert all(j.input["resolution"] == "4K" for j in jobs)


def test_missing_jobs_file_names_the_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, {"jobs_file": "nope.jsonl"})
    assert err.where.endswith(": jobs_file") and "nope.jsonl" in str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_jobs_file_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jsonl")
    err = error_of(tmp_path, {"jobs_file": "pipe.jsonl"})
    assert err.where.endswith(": jobs_file") and "not a regular file" in str(err)


def test_jobs_restreams_the_file_and_refuses_a_changed_one(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"prompt": "a"}, {"prompt": "b"}])
    campaign = load_campaign(path)
    assert [j.input["prompt"] for j in campaign.jobs()] == ["a", "b"]
    assert [j.input["prompt"] for j in campaign.jobs()] == ["a", "b"]
    path.write_bytes(path.read_bytes() + b'{"prompt": "c"}\n')
    with pytest.raises(ManifestError, match="changed"):
        list(campaign.jobs())


# ------------------------------------------------------------------------- other models


def test_other_models_pass_unknown_fields_through_unchanged(tmp_path: Path) -> None:
    job = {"prompt": "x", "guidance": 7.5, "style": {"name": "noir"}, "mode": "anything"}
    (result,) = jobs_of(tmp_path, {"api": {"model": "flux-2"}, "jobs": [{"id": "a", **job}]})
    assert result.input == job  # nothing filled in, nothing renamed


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"guidance": 7}, "prompt is required"),
        ({"prompt": ""}, "non-empty string"),
        ({"prompt": "x", "max_images": "two"}, "positive integer"),
        ({"prompt": "x", "n": float("nan")}, "finite number"),
        ({"prompt": "x", "n": 2**70}, "64-bit"),
    ],
)
def test_other_models_still_check_prompt_and_plain_json(
    tmp_path: Path, job: dict[str, Any], message: str
) -> None:
    assert message in str(error_of(tmp_path, {"api": {"model": "flux-2"}, "jobs": [job]}))


def test_other_models_reject_yaml_only_values(tmp_path: Path) -> None:
    path = write(tmp_path, "api: {model: flux-2}\njobs:\n  - prompt: x\n    seed: !!set {a}\n")
    with pytest.raises(ManifestError, match=r"jobs\[0\]\.seed: .*not a JSON value"):
        load_campaign(path)


# --------------------------------------------------------------- any value, any place


WEIRD: list[Any] = [None, True, 0, -1, 1.5, 10**30, float("inf"), "", "x", [], [1], {}, {"a": 1}]
PLACES = [
    ("name",), ("api",), ("api", "base_url"), ("api", "model"), ("api", "callback"),
    ("api", "callback", "listen"), ("api", "simulator", "time_scale"), ("limits",),
    ("limits", "rate"), ("polling", "interval"), ("polling", "jitter"), ("retry", "attempts"),
    ("budget", "max_cost"), ("output",), ("output", "dir"), ("output", "path"), ("defaults",),
    ("defaults", "prompt"), ("matrix",), ("matrix", "aspect_ratio"), ("jobs",), ("jobs", 0),
    ("jobs", 0, "prompt"), ("jobs", 0, "image_urls"), ("jobs", 0, "meta"), ("jobs", 0, "id"),
    ("jobs", 0, "max_images"), ("jobs_file",),
]  # fmt: skip


@pytest.mark.parametrize("place", PLACES, ids=lambda p: ".".join(map(str, p)))
def test_any_value_in_any_place_loads_or_gives_a_manifest_error(
    tmp_path: Path, place: tuple[Any, ...]
) -> None:
    for value in WEIRD:
        settings: dict[str, Any] = {"jobs": [{"prompt": "x"}]}
        node: Any = settings
        for key in place[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[place[-1]] = value
        try:
            campaign = campaign_of(tmp_path, settings)
            list(campaign.jobs())
        except ManifestError:
            pass
