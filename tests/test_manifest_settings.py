"""Campaign files: settings, defaults, paths, overrides, and errors that say where and what."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ManifestError
from runner.manifest.campaign import load_campaign
from runner.manifest.naming import Output
from runner.manifest.settings import ApiSettings, Budget, Limits, Polling, Retry

JOB = "jobs:\n  - prompt: a glass teapot\n"


def write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path, overrides: dict[str, Any] | None = None) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load_campaign(path, overrides)
    return caught.value


def test_minimal_campaign_gets_every_default(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, JOB, "spring.yaml"))
    assert campaign.name == "spring"
    assert campaign.source == tmp_path / "spring.yaml"
    assert campaign.source.is_absolute()
    assert campaign.api == ApiSettings()
    assert campaign.limits == Limits()
    assert campaign.polling == Polling()
    assert campaign.retry == Retry()
    assert campaign.budget == Budget()
    assert campaign.output == Output(dir=tmp_path / "out" / "spring")
    assert (campaign.job_count, campaign.image_count, campaign.warnings) == (1, 1, ())


def test_full_example_from_the_interface_parses_to_typed_settings(tmp_path: Path) -> None:
    write(tmp_path, '{"prompt": "from the file"}\n', "prompts.jsonl")
    path = write(
        tmp_path,
        """\
        name: spring-catalog
        api:
          base_url: https://api.apixo.ai/api/v1/
          key_env: MY_KEY
          model: seedream-4-5
          provider: value
          mode: callback
          callback:
            listen: 0.0.0.0:9000
            public_url: https://hooks.example.com/apixo
          simulator:
            time_scale: 0.5
        limits: {concurrency: 50, rate: 600, rate_period: 1m, downloads: 8}
        polling: {initial_delay: 15s, interval: 2, jitter: 0, timeout: 10m}
        retry: {attempts: 3, failed_tasks: 0, uncertain: 1, slot_wait: 5m}
        output:
          dir: results
          path: "{job_id}/{index:03d}.{ext}"
        budget: {max_images: 5000, max_cost: 100, price_per_image: 0.05}
        jobs:
          - prompt: a glass teapot
        jobs_file: prompts.jsonl
        """,
    )
    c = load_campaign(path)
    assert c.name == "spring-catalog"
    assert c.api == ApiSettings(
        base_url="https://api.apixo.ai/api/v1",  # trailing slash dropped
        key_env="MY_KEY",
        provider="value",
        mode="callback",
        callback_listen="0.0.0.0:9000",
        callback_public_url="https://hooks.example.com/apixo",
        sim_time_scale=0.5,
    )
    assert c.limits == Limits(concurrency=50, rate=600, rate_period_s=60.0, downloads=8)
    assert c.polling == Polling(initial_delay_s=15.0, interval_s=2.0, jitter=0.0, timeout_s=600.0)
    assert c.retry == Retry(attempts=3, failed_tasks=0, uncertain=1, slot_wait_s=300.0)
    assert c.output == Output(dir=tmp_path / "results", path_template="{job_id}/{index:03d}.{ext}")
    assert c.budget == Budget(max_images=5000, max_cost=100.0, price_per_image=0.05)
    assert c.job_count == 2


def test_embedded_base_url_starts_the_simulator(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, "api: {base_url: embedded}\n" + JOB))
    assert c.api.embedded and c.api.base_url == "embedded"
    assert not ApiSettings().embedded


def test_null_sections_and_values_mean_defaults(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, "api:\nlimits:\n  concurrency:\nname:\n" + JOB))
    assert c.api == ApiSettings() and c.limits == Limits() and c.name == "campaign"


def test_relative_paths_resolve_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "campaigns"
    write(folder / "data", '{"prompt": "x"}\n', "prompts.jsonl")
    path = write(folder, "jobs_file: data/prompts.jsonl\noutput: {dir: ../shared/out}\n")
    elsewhere = tmp_path / "cron-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_campaign(os.path.relpath(path, elsewhere))
    assert c.source == path
    assert c.output.dir == tmp_path / "shared" / "out"
    assert [job.where for job in c.jobs()] == [
        os.path.join(os.path.relpath(folder, elsewhere), "data", "prompts.jsonl") + ":1"
    ]


def test_default_output_dir_is_out_name_next_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "m", "name: spring\n" + JOB)
    monkeypatch.chdir(tmp_path)
    assert load_campaign("m/campaign.yaml").output.dir == path.parent / "out" / "spring"


def test_absolute_output_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    c = load_campaign(write(tmp_path / "m", f"output: {{dir: '{target}'}}\n" + JOB))
    assert c.output.dir == target


@pytest.mark.parametrize("name", ["campaign.txt", "campaign.json", "campaign"])
def test_unknown_manifest_extension_is_rejected(tmp_path: Path, name: str) -> None:
    err = error_of(write(tmp_path, JOB, name))
    assert ".yaml" in str(err) and ".jsonl" in str(err)


def test_missing_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    err = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err) and "cannot read" in str(err)


def test_directory_as_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "dir.yaml").mkdir()
    assert "cannot read" in str(error_of(tmp_path / "dir.yaml"))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "name: x\njobs:\n  - prompt: [unclosed\n"))
    assert "campaign.yaml:" in err.where and "not valid YAML" in str(err)
    assert err.where.rsplit(":", 1)[1].isdigit()


@pytest.mark.parametrize(
    "text",
    [
        b"\xff\xfe\xfa not utf-8",
        b"a: !!python/object:os.system {}\n",
        b"a: !!int abc\n",
        b"a: !!float x\n",
        b"a: !!timestamp nope\n",
        b"a: !!binary '@@'\n",
        b"---\na: 1\n---\nb: 2\n",
        b"? [a, b]\n: 1\n",
        b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        b"a: *nothing\n",
        b"\x00",
    ],
)
def test_hostile_yaml_gives_a_manifest_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_bytes(text)
    error_of(path)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "jobs: []\n", "jobs:\n"])
def test_manifest_without_jobs_is_an_error(tmp_path: Path, text: str) -> None:
    assert "no jobs" in str(error_of(write(tmp_path, text)))


@pytest.mark.parametrize("text", ["- prompt: x\n", "just a string\n", "5\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    err = error_of(write(tmp_path, text))
    assert "must be a mapping" in str(err) and "jobs_file" in str(err)


@pytest.mark.parametrize(
    ("text", "where", "listed"),
    [
        ("jbos: []\n", "jbos", "did you mean 'jobs'?"),
        ("limits: {concurency: 5}\n", "limits.concurency", "did you mean 'concurrency'?"),
        ("api: {callback: {public: x}}\n", "api.callback.public", "listen, public_url"),
        ("api: {simulator: {scale: 1}}\n", "api.simulator.scale", "time_scale"),
        ("polling: {timout: 5}\n", "polling.timout", "did you mean 'timeout'?"),
        ("output: {path_template: x}\n", "output.path_template", "dir, path"),
        ("budget: {max: 1}\n", "budget.max", "max_images, max_cost, price_per_image"),
        ("retry: {tries: 1}\n", "retry.tries", "attempts, failed_tasks"),
        ("api: {url: x}\n", "api.url", "base_url, key_env, model, provider, mode"),
        ("5: x\n", "campaign.yaml:1", "name, api, limits"),
    ],
)
def test_unknown_keys_name_the_key_path_and_list_the_allowed_keys(
    tmp_path: Path, text: str, where: str, listed: str
) -> None:
    err = error_of(write(tmp_path, text + JOB))
    assert where in err.where
    assert "unknown key" in str(err) and listed in str(err)


@pytest.mark.parametrize(
    ("text", "where", "allowed"),
    [
        ("limits: {concurrency: 0}", "limits.concurrency", "1-1000"),
        ("limits: {concurrency: 1001}", "limits.concurrency", "1-1000"),
        ("limits: {concurrency: '10'}", "limits.concurrency", "1-1000"),
        ("limits: {concurrency: true}", "limits.concurrency", "1-1000"),
        ("limits: {concurrency: 2.5}", "limits.concurrency", "1-1000"),
        ("limits: {rate: 0}", "limits.rate", ">= 1"),
        ("limits: {rate_period: 0}", "limits.rate_period", "above 0"),
        ("limits: {rate_period: soon}", "limits.rate_period", "'1.5s'"),
        ("limits: {downloads: 0}", "limits.downloads", "1-256"),
        ("limits: {downloads: 257}", "limits.downloads", "1-256"),
        ("limits: x", "limits", "must be a mapping"),
        ("limits: [1]", "limits", "must be a mapping"),
        ("polling: {initial_delay: -1}", "polling.initial_delay", "negative"),
        ("polling: {interval: 0}", "polling.interval", "above 0"),
        ("polling: {interval: 0ms}", "polling.interval", "above 0"),
        ("polling: {jitter: 1}", "polling.jitter", "fraction"),
        ("polling: {jitter: -0.1}", "polling.jitter", "fraction"),
        ("polling: {jitter: .nan}", "polling.jitter", "fraction"),
        ("polling: {timeout: 0}", "polling.timeout", "above 0"),
        ("polling: {timeout: 1000d}", "polling.timeout", "365d"),
        ("retry: {attempts: 0}", "retry.attempts", "1-100"),
        ("retry: {attempts: 101}", "retry.attempts", "1-100"),
        ("retry: {failed_tasks: -1}", "retry.failed_tasks", "0-20"),
        ("retry: {failed_tasks: 21}", "retry.failed_tasks", "0-20"),
        ("retry: {uncertain: -1}", "retry.uncertain", "0-100"),
        ("retry: {slot_wait: -1}", "retry.slot_wait", "negative"),
        ("api: {mode: push}", "api.mode", "poll, callback"),
        ("polling: {schedule: smart}", "polling.schedule", "adaptive, fixed"),
        ("api: {provider: cheapest}", "api.provider", "auto, value, official"),
        ("api: {base_url: ftp://x.example}", "api.base_url", "http(s) URL or the word embedded"),
        ("api: {base_url: not a url}", "api.base_url", "embedded"),
        ("api: {base_url: 5}", "api.base_url", "embedded"),
        ("api: {key_env: 1KEY}", "api.key_env", "environment variable name"),
        ("api: {key_env: MY-KEY}", "api.key_env", "environment variable name"),
        ("api: {model: ''}", "api.model", "model name"),
        ("api: {model: a/b}", "api.model", "model name"),
        ("api: {callback: {listen: nowhere}}", "api.callback.listen", "host:port"),
        ("api: {callback: {listen: 'h:70000'}}", "api.callback.listen", "host:port"),
        ("api: {callback: {public_url: 'http://x.example'}}", "public_url", "https://"),
        ("api: {callback: {public_url: 'https://x.example/?a=1'}}", "public_url", "without ?"),
        ("api: {simulator: {time_scale: 0}}", "api.simulator.time_scale", "above 0"),
        ("api: x", "api", "must be a mapping"),
        ("budget: {max_images: 0}", "budget.max_images", ">= 1"),
        ("budget: {max_cost: 0}", "budget.max_cost", "above 0"),
        ("budget: {price_per_image: -1}", "budget.price_per_image", "above 0"),
        ("budget: {price_per_image: 1e400}", "budget.price_per_image", "above 0"),
        ("name: ../escape", "name", "without /"),
        ("name: 5", "name", "printable"),
        ("name: ''", "name", "printable"),
        ("output: {dir: 5}", "output.dir", "a path"),
        ("output: {dir: ''}", "output.dir", "a path"),
        ("output: 5", "output", "must be a mapping"),
        ("jobs_file: [a]", "jobs_file", "a path"),
        ("jobs: 5", "jobs", "list of jobs"),
        ("jobs: {prompt: x}", "jobs", "list of jobs"),
    ],
)
def test_bad_setting_values_name_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, where: str, allowed: str
) -> None:
    err = error_of(write(tmp_path, text + "\n" + ("" if text.startswith("jobs:") else JOB)))
    assert where in err.where
    assert "campaign.yaml:" in err.where  # the line is named too
    assert allowed in str(err)


def test_error_names_the_yaml_line_of_the_key(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "name: x\n\nlimits:\n  rate: 5\n  downloads: 0\n" + JOB))
    assert err.where.endswith("campaign.yaml:5: limits.downloads")


def test_callback_mode_needs_a_public_url(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "api: {mode: callback}\n" + JOB))
    assert "api.mode" in err.where and "public_url" in str(err)


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/apixo", "http://127.0.0.1:9000/hook", "http://localhost/x"],
)
def test_callback_public_url_accepts_https_and_local_http(tmp_path: Path, url: str) -> None:
    text = f"api: {{mode: callback, callback: {{public_url: '{url}'}}}}\n" + JOB
    assert load_campaign(write(tmp_path, text)).api.callback_public_url == url


def test_overrides_win_over_the_manifest(tmp_path: Path) -> None:
    text = "limits: {concurrency: 5, rate: 50, rate_period: 10, downloads: 4}\n" + JOB
    c = load_campaign(
        write(tmp_path, text),
        {
            "base_url": "embedded",
            "concurrency": 7,
            "rate": "70",
            "rate_period": "2m",
            "downloads": None,  # not given on the command line
        },
    )
    assert c.api.base_url == "embedded"
    assert c.limits == Limits(concurrency=7, rate=70, rate_period_s=120.0, downloads=4)


@pytest.mark.parametrize(
    ("key", "value", "option"),
    [
        ("concurrency", 0, "--concurrency"),
        ("concurrency", 5000, "--concurrency"),
        ("concurrency", "many", "--concurrency"),
        ("rate", 0, "--rate"),
        ("rate_period", "0", "--rate-period"),
        ("rate_period", "often", "--rate-period"),
        ("downloads", 1000, "--downloads"),
        ("base_url", "nowhere", "--base-url"),
    ],
)
def test_bad_override_names_the_option(tmp_path: Path, key: str, value: Any, option: str) -> None:
    err = error_of(write(tmp_path, JOB), {key: value})
    assert err.where == option


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    assert "unknown option 'concurency'" in str(error_of(write(tmp_path, JOB), {"concurency": 5}))


def test_overrides_apply_to_a_jsonl_job_list(tmp_path: Path) -> None:
    path = write(tmp_path, '{"prompt": "x"}\n', "list.jsonl")
    c = load_campaign(path, {"concurrency": 3})
    assert c.limits.concurrency == 3 and c.name == "list"


def test_budget_below_the_worst_case_gives_a_warning(tmp_path: Path) -> None:
    text = "budget: {max_images: 3, max_cost: 0.1}\ndefaults: {max_images: 2}\n"
    c = load_campaign(write(tmp_path, text + JOB + "  - prompt: another\n"))
    assert c.image_count == 4
    assert any("budget.max_images" in w for w in c.warnings)
    assert any("budget.max_cost" in w for w in c.warnings)


@pytest.mark.parametrize(
    "template",
    [
        "{job_id}_{index}.{ext}",
        "{task_id}/{job_id}/{index:03d}.{ext}",
        "images/{job_id}-{index:2}.png",
        "x/{{literal}}/{job_id}/{index}",
    ],
)
def test_output_path_templates_that_are_accepted(tmp_path: Path, template: str) -> None:
    c = load_campaign(write(tmp_path, f"output: {{path: '{template}'}}\n" + JOB))
    assert c.output.path_template == template


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{job_id}.{ext}", "both {job_id} and {index}"),
        ("{index}.{ext}", "both {job_id} and {index}"),
        ("/abs/{job_id}/{index}", "relative"),
        ("~/{job_id}/{index}", "relative"),
        ("../{job_id}/{index}", "no .."),
        ("images/../../{job_id}/{index}", "no .."),
        ("{job_id}/..\\\\{index}", "no .."),
        ("{job_id}/{index}/{size}", "unknown placeholder {size}"),
        ("{}/{job_id}/{index}", "unknown placeholder {}"),
        ("{0}/{job_id}/{index}", "unknown placeholder {0}"),
        ("{job_id.x}/{index}", "unknown placeholder"),
        ("{job_id[0]}/{index}", "unknown placeholder"),
        ("{job_id}/{index", "unbalanced"),
        ("{job_id}/{index}}", "unbalanced"),
        ("{job_id!r}/{index}", "collide"),
        ("{job_id:.3}/{index}", "collide"),
        ("{job_id}/{index:.0e}", "collide"),
        ("{job_id}/{index:{ext}}", "collide"),
        ("", "not a path template"),
    ],
)
def test_output_path_templates_that_could_escape_or_collide_are_rejected(
    tmp_path: Path, template: str, problem: str
) -> None:
    err = error_of(write(tmp_path, f"output: {{path: '{template}'}}\n" + JOB))
    assert "output.path" in err.where and problem in str(err)


def test_output_path_must_be_a_string(tmp_path: Path) -> None:
    assert "output.path" in error_of(write(tmp_path, "output: {path: 5}\n" + JOB)).where
