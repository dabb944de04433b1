"""The simulator enforces every rule of the API page's tables, answers in the envelope, and
authenticates with the Bearer key."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from simfixtures import MODEL, body, fast_config, get_status, post, submit

from runner.sim import SimServer

LONG_OK = "x" * 5000
LONG_BAD = "x" * 5001
URL = "https://example.com/ref.png"


def with_top(**fields: Any) -> dict[str, Any]:
    payload = body()
    payload.update(fields)
    return payload


def without_input(name: str) -> dict[str, Any]:
    payload = body()
    del payload["input"][name]
    return payload


def i2i(urls: Any) -> dict[str, Any]:
    return body(mode="image-to-image", image_urls=urls)


# (payload, the field data.error must name)
INVALID = {
    "request_type unknown": (with_top(request_type="sync"), "request_type"),
    "request_type empty": (with_top(request_type=""), "request_type"),
    "request_type not a string": (with_top(request_type=1), "request_type"),
    "request_type null": (with_top(request_type=None), "request_type"),
    "callback without url": (with_top(request_type="callback"), "callback_url"),
    "callback url plain http": (
        with_top(request_type="callback", callback_url="http://example.com/hook"),
        "callback_url",
    ),
    "callback url ftp": (
        with_top(request_type="callback", callback_url="ftp://example.com/hook"),
        "callback_url",
    ),
    "callback url not a url": (
        with_top(request_type="callback", callback_url="hook"),
        "callback_url",
    ),
    "callback url not a string": (
        with_top(request_type="callback", callback_url=42),
        "callback_url",
    ),
    "callback url with space": (
        with_top(request_type="callback", callback_url="https://example.com/a b"),
        "callback_url",
    ),
    "provider unknown": (with_top(provider="cheapest"), "provider"),
    "provider not a string": (with_top(provider=True), "provider"),
    "unknown top-level field": (with_top(model="seedream-4-5"), "model"),
    "input missing": ({"request_type": "async"}, "input"),
    "input a list": ({"input": [{"prompt": "x"}]}, "input"),
    "input a string": ({"input": "a red fox"}, "input"),
    "body a list": ([body()], "body"),
    "body a string": ("a red fox", "body"),
    "body null": (None, "body"),
    "mode unknown": (body(mode="img2img"), "input.mode"),
    "mode not a string": (body(mode=2), "input.mode"),
    "prompt missing": (without_input("prompt"), "input.prompt"),
    "prompt empty": (body(prompt=""), "input.prompt"),
    "prompt 5001 characters": (body(prompt=LONG_BAD), "input.prompt"),
    "prompt not a string": (body(prompt=["a", "fox"]), "input.prompt"),
    "image_urls missing for image-to-image": (body(mode="image-to-image"), "input.image_urls"),
    "image_urls empty for image-to-image": (i2i([]), "input.image_urls"),
    "image_urls 15": (i2i([URL] * 15), "input.image_urls"),
    "image_urls 15 in text-to-image": (body(image_urls=[URL] * 15), "input.image_urls"),
    "image_urls a string": (i2i(URL), "input.image_urls"),
    "image_urls item ftp": (i2i([URL, "ftp://example.com/a.png"]), "input.image_urls[1]"),
    "image_urls item relative": (i2i(["/a.png"]), "input.image_urls[0]"),
    "image_urls item gif": (i2i(["https://example.com/a.gif"]), "input.image_urls[0]"),
    "image_urls item tiff": (i2i([URL, URL, "https://e.com/a.TIFF"]), "input.image_urls[2]"),
    "image_urls item not a string": (i2i([7]), "input.image_urls[0]"),
    "max_images missing": (without_input("max_images"), "input.max_images"),
    "max_images 0": (body(max_images=0), "input.max_images"),
    "max_images 11": (body(max_images=11), "input.max_images"),
    "max_images negative": (body(max_images=-1), "input.max_images"),
    "max_images a string": (body(max_images="2"), "input.max_images"),
    "max_images a float": (body(max_images=2.0), "input.max_images"),
    "max_images a bool": (body(max_images=True), "input.max_images"),
    "max_images null": (body(max_images=None), "input.max_images"),
    "resolution unknown": (body(resolution="1K"), "input.resolution"),
    "resolution lower case": (body(resolution="2k"), "input.resolution"),
    "resolution a number": (body(resolution=4), "input.resolution"),
    "aspect_ratio unknown": (body(aspect_ratio="5:4"), "input.aspect_ratio"),
    "aspect_ratio padded": (body(aspect_ratio="1:1 "), "input.aspect_ratio"),
    "aspect_ratio a number": (body(aspect_ratio=1), "input.aspect_ratio"),
    "sequential unknown": (
        body(sequential_image_generation="on"),
        "input.sequential_image_generation",
    ),
    "sequential a bool": (
        body(sequential_image_generation=True),
        "input.sequential_image_generation",
    ),
    "unknown input field": (body(negative_prompt="blurry"), "input.negative_prompt"),
}


@pytest.mark.parametrize(("payload", "field"), list(INVALID.values()), ids=list(INVALID))
async def test_invalid_submission_answers_400_naming_the_field(
    fast_sim: SimServer, http: aiohttp.ClientSession, payload: Any, field: str
) -> None:
    status, envelope = await post(http, fast_sim, payload)
    assert status == 400
    assert envelope["code"] == 400
    assert envelope["data"]["error"] == field
    assert isinstance(envelope["message"], str) and envelope["message"]
    assert fast_sim.stats.tasks_created == 0


ASPECTS = ["1:1", "2:3", "3:2", "4:3", "3:4", "9:16", "16:9", "21:9"]
VALID = {
    "minimal": body(),
    "max_images 1": body(max_images=1),
    "max_images 10": body(max_images=10),
    "prompt 1 character": body(prompt="x"),
    "prompt 5000 characters": body(prompt=LONG_OK),
    "mode text-to-image": body(mode="text-to-image"),
    "image_urls 1": i2i([URL]),
    "image_urls 14": i2i([URL] * 14),
    "image_urls extensions": i2i(
        [
            "https://e.com/a.jpg",
            "https://e.com/a.JPEG",
            "http://e.com/b.png",
            "https://e.com/c.webp",
            "https://e.com/images/12345",
            "https://e.com/d.png?size=large&v=2",
        ]
    ),
    "image_urls empty for text-to-image": body(image_urls=[]),
    "resolution 2K": body(resolution="2K"),
    "resolution 4K": body(resolution="4K"),
    **{f"aspect_ratio {a}": body(aspect_ratio=a) for a in ASPECTS},
    "sequential disabled": body(sequential_image_generation="disabled"),
    "sequential auto": body(sequential_image_generation="auto", max_images=4),
    "request_type async": with_top(request_type="async"),
    "provider auto": with_top(provider="auto"),
    "provider value": with_top(provider="value"),
    "provider official": with_top(provider="official"),
    "callback https": with_top(request_type="callback", callback_url="https://example.com/h"),
    "callback http localhost": with_top(
        request_type="callback", callback_url="http://localhost:9/hook?secret=abc"
    ),
    "callback http 127.0.0.1": with_top(
        request_type="callback", callback_url="http://127.0.0.1:9/hook"
    ),
    "every field": {
        "request_type": "async",
        "provider": "official",
        "input": {
            "mode": "image-to-image",
            "prompt": "a comic strip",
            "image_urls": [URL],
            "max_images": 3,
            "resolution": "4K",
            "aspect_ratio": "16:9",
            "sequential_image_generation": "auto",
        },
    },
}


@pytest.mark.parametrize("payload", list(VALID.values()), ids=list(VALID))
async def test_valid_submission_is_accepted_with_a_task_id(
    fast_sim: SimServer, http: aiohttp.ClientSession, payload: dict[str, Any]
) -> None:
    status, envelope = await post(http, fast_sim, payload)
    assert status == 200, envelope
    assert envelope == {
        "code": 200,
        "message": "success",
        "data": {"taskId": envelope["data"]["taskId"]},
    }
    assert envelope["data"]["taskId"].startswith("task_")
    assert envelope["data"]["taskId"] in fast_sim.tasks


async def test_non_json_body_answers_400_body(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    url = f"{fast_sim.base_url}/generateTask/{MODEL}"
    for raw in (b"prompt=fox", b"", b"{"):
        async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            assert (await r.json())["data"]["error"] == "body"


async def test_oversized_body_answers_400_body(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    status, envelope = await post(http, fast_sim, body(prompt="x" * 2_000_000))
    assert status == 400
    assert envelope["data"]["error"] == "body"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}, {"Authorization": "abc"}],
    ids=["missing", "empty token", "basic scheme", "no scheme"],
)
async def test_missing_or_malformed_key_answers_401_on_both_endpoints(
    fast_sim: SimServer, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession(headers=headers) as anon:
        async with anon.post(f"{fast_sim.base_url}/generateTask/{MODEL}", json=body()) as r:
            assert r.status == 401
            assert (await r.json())["code"] == 401
        async with anon.get(f"{fast_sim.base_url}/statusTask/{MODEL}?taskId=task_x") as r:
            assert r.status == 401
    assert fast_sim.stats.count(status=401) == 2
    assert fast_sim.stats.tasks_created == 0


async def test_configured_api_key_is_the_only_one_accepted() -> None:
    async with SimServer(fast_config(api_key="s3cret")) as sim:
        for token, expected in (("other", 401), ("s3cret", 200), ("S3CRET", 401)):
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(headers=headers) as s:
                status, _ = await post(s, sim, body())
                assert status == expected, token


async def test_without_configured_key_any_non_empty_token_is_accepted(fast_sim: SimServer) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "bearer whatever"}) as s:
        status, _ = await post(s, fast_sim, body())
    assert status == 200


@pytest.mark.parametrize("endpoint", ["generateTask", "statusTask"])
async def test_unknown_model_answers_404_model(
    fast_sim: SimServer, http: aiohttp.ClientSession, endpoint: str
) -> None:
    url = f"{fast_sim.base_url}/{endpoint}/seedream-9-9"
    method = http.post if endpoint == "generateTask" else http.get
    async with method(url, json=body(), params={"taskId": "task_x"}) as r:
        assert r.status == 404
        envelope = await r.json()
    assert envelope["code"] == 404
    assert envelope["data"]["error"] == "model"


async def test_unknown_task_answers_404(fast_sim: SimServer, http: aiohttp.ClientSession) -> None:
    status, envelope = await get_status(http, fast_sim, "task_doesnotexist")
    assert status == 404
    assert envelope["data"]["error"] == "taskId"


async def test_task_is_invisible_to_another_key_and_another_model(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id = await submit(http, fast_sim, body())
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as other:
        status, _ = await get_status(other, fast_sim, task_id)
        assert status == 404
    status, _ = await get_status(http, fast_sim, task_id, model="flux-2")
    assert status == 404
    status, _ = await get_status(http, fast_sim, task_id)
    assert status == 200


async def test_status_without_task_id_answers_400(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{fast_sim.base_url}/statusTask/{MODEL}") as r:
        assert r.status == 400
        assert (await r.json())["data"]["error"] == "taskId"


@pytest.mark.parametrize("model", ["seedream-5-0", "nano-banana", "flux-2"])
async def test_other_models_accept_any_input_with_a_prompt(
    fast_sim: SimServer, http: aiohttp.ClientSession, model: str
) -> None:
    payload = {"input": {"prompt": "a lighthouse", "guidance": 7.5, "style": ["noir"]}}
    task_id = await submit(http, fast_sim, payload, model=model)
    status, envelope = await get_status(http, fast_sim, task_id, model=model)
    assert status == 200 and envelope["data"]["taskId"] == task_id
    assert fast_sim.tasks[task_id].n_images == 1  # max_images defaults to 1
    bad: dict[str, Any]
    for bad in ({"input": {}}, {"input": {"prompt": ""}}, {"input": {"prompt": 3}}):
        status, envelope = await post(http, fast_sim, bad, model=model)
        assert status == 400 and envelope["data"]["error"] == "input.prompt"


async def test_every_answer_has_the_envelope_with_code_mirroring_status(
    fast_sim: SimServer, http: aiohttp.ClientSession
) -> None:
    task_id = await submit(http, fast_sim, body())
    calls = [
        ("post", f"/generateTask/{MODEL}", body()),
        ("post", f"/generateTask/{MODEL}", {"input": {}}),
        ("post", "/generateTask/unknown", body()),
        ("get", f"/statusTask/{MODEL}?taskId={task_id}", None),
        ("get", f"/statusTask/{MODEL}?taskId=nope", None),
        ("get", f"/generateTask/{MODEL}", None),  # wrong method
        ("get", "/noSuchEndpoint", None),
    ]
    seen = set()
    for method, path, payload in calls:
        async with http.request(method, fast_sim.base_url + path, json=payload) as r:
            assert r.content_type == "application/json"
            envelope = await r.json()
        assert set(envelope) == {"code", "message", "data"}
        assert envelope["code"] == r.status
        assert isinstance(envelope["message"], str)
        assert isinstance(envelope["data"], dict)
        seen.add(r.status)
    assert seen == {200, 400, 404, 405}
    url = f"{fast_sim.base_url}/statusTask/{MODEL}?taskId={task_id}"
    async with aiohttp.ClientSession() as anon, anon.get(url) as r:
        assert (await r.json())["code"] == 401
