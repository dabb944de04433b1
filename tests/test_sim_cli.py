"""``python -m runner.sim``: every knob is an option, the first stdout line is the base URL,
and the server answers a client until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import fields

import aiohttp
import pytest
from simfixtures import body

from runner.sim import SimConfig
from runner.sim.__main__ import build_parser, main, option_name


def test_every_config_field_has_an_option() -> None:
    parser = build_parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    for f in fields(SimConfig):
        assert option_name(f.name) in known, f.name
    assert {"--p-429", "--p-5xx", "--image-bytes", "--seed", "--url-ttl", "--rate-period"} <= known


def test_options_map_onto_config_fields() -> None:
    argv = [
        "--time-scale=0.01",
        "--api-key=k",
        "--rate=50",
        "--rate-period=2",
        "--concurrency=7",
        "--pending", "0", "1",
        "--gen-2k", "2", "3",
        "--gen-4k", "4", "5",
        "--profile=mixture",
        "--drift-after=7",
        "--url-ttl=60",
        "--retention=120",
        "--image-bytes=4096",
        "--retry-after=0.5",
        "--no-send-retry-after",
        "--p-429=0.1",
        "--p-5xx=0.2",
        "--p-reset=0.01",
        "--p-reset-after=0.02",
        "--p-5xx-after-create=0.021",
        "--p-slow=0.03",
        "--slow=2",
        "--p-truncate=0.04",
        "--p-corrupt=0.05",
        "--p-html=0.011",
        "--p-wrong-type=0.012",
        "--p-oversize=0.013",
        "--p-hostile=0.014",
        "--hostile=not_json",
        "--bad-status-first=2",
        "--p-fail=0.06",
        "--p-stuck=0.07",
        "--foreign-live=3",
        "--foreign-hold=9",
        "--credits=100",
        "--callback-timeout=10",
        "--callback-retry-delays", "1", "2",
        "--p-cb-duplicate=0.08",
        "--p-cb-drop=0.09",
        "--seed=3",
    ]  # fmt: skip
    args = vars(build_parser().parse_args(argv))
    assert (args.pop("host"), args.pop("port")) == ("127.0.0.1", 8000)
    cfg = SimConfig(**args)
    assert cfg.pending_s == (0.0, 1.0) and cfg.callback_retry_delays_s == (1.0, 2.0)
    assert cfg.send_retry_after is False and cfg.credits == 100 and cfg.p_cb_drop == 0.09
    assert (cfg.retention_s, cfg.p_5xx_after_create, cfg.bad_status_first) == (120.0, 0.021, 2)
    assert (cfg.foreign_live, cfg.foreign_hold_s) == (3, 9.0)
    assert (cfg.profile, cfg.drift_after_s) == ("mixture", 7.0)
    assert len(args) == len(fields(SimConfig))  # every field was set from the command line


def test_unset_options_keep_the_defaults() -> None:
    args = vars(build_parser().parse_args(["--port", "0"]))
    del args["host"], args["port"]
    assert SimConfig(**args) == SimConfig()


def test_bad_option_value_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--p-429", "1.5"])
    assert exc.value.code == 2


async def test_subprocess_serves_on_port_0_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.sim",
        "--port",
        "0",
        "--time-scale",
        "0.001",
        "--api-key",
        "cli-key",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        base_url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api/v1")
        assert not base_url.startswith("http://127.0.0.1:0/")
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer cli-key"}) as s:
            async with s.post(f"{base_url}/generateTask/seedream-4-5", json=body()) as r:
                assert r.status == 200
                assert (await r.json())["data"]["taskId"].startswith("task_")
            async with s.post(f"{base_url}/generateTask/seedream-4-5", json={}) as r:
                assert r.status == 400
        other = {"Authorization": "Bearer other"}
        async with (
            aiohttp.ClientSession(headers=other) as s,
            s.post(f"{base_url}/generateTask/seedream-4-5", json=body()) as r,
        ):
            assert r.status == 401  # --api-key reached the server
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
