"""Reference images: a URL naming a format the API refuses (``.gif``) is exit 2 at
validation; ``--check-images`` asks every distinct URL before anything is sent and makes
unreachable ones, non-image types and images over 10 MB an exit-2 error naming the job."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from runs import FAST_POLLING, run_cli

from runner.api.refcheck import MAX_IMAGE_BYTES
from runner.errors import ManifestError
from runner.manifest.campaign import load_campaign
from runner.sim import SimServer
from runner.sim.images import render_png

PNG = render_png("ref", 0, 2048)
TOO_BIG = MAX_IMAGE_BYTES + 1


def campaign(folder: Path, jobs: list[dict[str, Any]], **settings: Any) -> Path:
    path = folder / "campaign.yaml"
    doc = {"name": "refs", "polling": dict(FAST_POLLING), **settings, "jobs": jobs}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def error_of(folder: Path, jobs: list[dict[str, Any]], **settings: Any) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        load_campaign(campaign(folder, jobs, **settings))
    return caught.value


# ------------------------------------------------------------------ extensions, no network


def test_a_gif_reference_fails_the_dry_run_naming_the_job_and_index(tmp_path: Path) -> None:
    path = campaign(
        tmp_path,
        [
            {"prompt": "a", "image_urls": ["https://example.com/a.png"]},
            {"id": "anim", "prompt": "b",
             "image_urls": ["https://example.com/b.jpg", "https://example.com/spin.gif"]},
        ],
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "runner", str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"{path}:" in done.stderr and ": jobs[1].image_urls[1]: " in done.stderr
    assert "'https://example.com/spin.gif' names a .gif file" in done.stderr
    assert "JPG, PNG or WebP" in done.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a.JPG",
        "https://example.com/a.jpeg",
        "https://example.com/dir/a.Png",
        "https://example.com/a.webp?sig=x.gif",  # the query is not the path
        "https://example.com/render",  # no extension: a dynamic URL, allowed
        "https://example.com/v1.2/render?id=7",  # a dot in a folder, not the name
        "https://example.com/",
    ],
)
def test_allowed_reference_image_urls(tmp_path: Path, url: str) -> None:
    (job,) = load_campaign(campaign(tmp_path, [{"prompt": "a", "image_urls": [url]}])).jobs()
    assert job.input["image_urls"] == [url]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/a.gif", "names a .gif file"),
        ("https://example.com/a.GIF", "names a .GIF file"),
        ("https://example.com/scan.tiff", "names a .tiff file"),
        ("https://example.com/image.php?id=3", "names a .php file"),
        ("https://example.com/a.", "ends in a dot"),
    ],
)
def test_refused_reference_image_urls(tmp_path: Path, url: str, message: str) -> None:
    err = error_of(tmp_path, [{"prompt": "a", "image_urls": [url]}])
    assert err.where.endswith(": jobs[0].image_urls[0]") and message in str(err)


def test_a_gif_in_defaults_or_matrix_is_named_there(tmp_path: Path) -> None:
    gif = ["https://example.com/a.gif"]
    err = error_of(tmp_path, [{"prompt": "a"}], defaults={"image_urls": gif})
    assert err.where.endswith(": defaults.image_urls[0]")
    err = error_of(tmp_path, [{"prompt": "a"}], matrix={"image_urls": [["https://x/a.png"], gif]})
    assert err.where.endswith(": matrix.image_urls[1][0]")


# ------------------------------------------------------------------------- --check-images


class ImageHost:
    """A local web server holding reference images, good and bad; counts what it is asked."""

    def __init__(self) -> None:
        self.asked: Counter[tuple[str, str]] = Counter()  # (method, path)
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked[(request.method, request.path)] += 1
        name = request.match_info["name"]
        head = request.method == "HEAD"
        if name in ("ok.png", "render"):
            return web.Response(body=PNG, content_type="image/png")
        if name == "page.png":  # a login page where the image should be
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        if name == "huge.png":  # announces more than 10 MB
            if head:
                headers = {"Content-Type": "image/png", "Content-Length": str(TOO_BIG)}
                return web.Response(headers=headers)
            return web.Response(status=500)
        if name in ("signed.png", "signed-huge.png"):  # HEAD refused, as by signed URLs
            if head:
                return web.Response(status=403)
            total = len(PNG) if name == "signed.png" else TOO_BIG
            headers = {"Content-Range": f"bytes 0-0/{total}"}
            return web.Response(status=206, body=PNG[:1], headers=headers, content_type="image/png")
        return web.Response(status=404, text="not found")

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
async def host() -> AsyncIterator[ImageHost]:
    images = ImageHost()
    app = web.Application()
    app.router.add_route("*", "/img/{name}", images.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    images.base = f"http://127.0.0.1:{port}/img"
    try:
        yield images
    finally:
        await runner.cleanup()


async def test_check_images_passes_usable_images_asking_each_url_once(
    tmp_path: Path, host: ImageHost
) -> None:
    jobs = [
        {"id": f"j{i}", "prompt": f"p{i}", "image_urls": [host.url("ok.png")]} for i in range(3)
    ]
    jobs.append({"id": "dyn", "prompt": "d", "image_urls": [host.url("render")]})
    jobs.append({"id": "sig", "prompt": "s", "image_urls": [host.url("signed.png")]})
    code, err = await run_cli(campaign(tmp_path, jobs), "embedded", "--dry-run", "--check-images")
    assert code == 0, err
    assert "reference images: 3 checked, all usable" in err
    assert host.asked[("HEAD", "/img/ok.png")] == 1, "three jobs, one URL, one request"
    assert host.asked[("GET", "/img/ok.png")] == 0, "HEAD was enough"
    assert host.asked[("GET", "/img/signed.png")] == 1, "a refused HEAD falls back to GET"


async def test_check_images_names_every_unusable_image_at_its_job(
    tmp_path: Path, host: ImageHost
) -> None:
    bad = ["missing.png", "page.png", "huge.png", "signed-huge.png"]
    jobs = [{"prompt": "fine", "image_urls": [host.url("ok.png")]}]
    jobs += [{"id": f"bad{i}", "prompt": f"p{i}", "image_urls": [host.url(name)]}
             for i, name in enumerate(bad)]  # fmt: skip
    path = campaign(tmp_path, jobs)
    code, err = await run_cli(path, "embedded", "--dry-run", "--check-images")
    assert code == 2
    assert "4 reference images cannot be used" in err and "nothing was sent" in err
    assert f"jobs[1] (id bad0) image_urls[0]: {host.url('missing.png')} answered 404" in err
    assert f"(id bad1) image_urls[0]: {host.url('page.png')} is served as text/html" in err
    assert f"(id bad2) image_urls[0]: {host.url('huge.png')} is {TOO_BIG:,} bytes" in err
    assert f"(id bad3) image_urls[0]: {host.url('signed-huge.png')} is {TOO_BIG:,} bytes" in err
    assert f"the API takes at most 10 MB ({MAX_IMAGE_BYTES:,} bytes)" in err
    assert "(id None)" not in err and host.url("ok.png") not in err


async def test_check_images_names_an_unreachable_host(tmp_path: Path, host: ImageHost) -> None:
    dead = "http://127.0.0.1:9/ref.png"  # the discard port: nothing listens
    path = campaign(tmp_path, [{"id": "gone", "prompt": "a", "image_urls": [dead]}])
    code, err = await run_cli(path, "embedded", "--dry-run", "--check-images")
    assert code == 2
    assert f"jobs[0] (id gone) image_urls[0]: reference image {dead} cannot be reached" in err


async def test_check_images_stops_a_run_before_anything_is_sent(
    tmp_path: Path, host: ImageHost, sim: SimServer
) -> None:
    jobs = [{"prompt": "a", "image_urls": [host.url("ok.png")]},
            {"prompt": "b", "image_urls": [host.url("missing.png")]}]  # fmt: skip
    path = campaign(tmp_path, jobs)
    code, err = await run_cli(path, sim.base_url, "--check-images")
    assert code == 2 and "answered 404" in err
    assert sum(sim.stats.requests.values()) == 0, "nothing reached the API"
    assert not (tmp_path / "out").exists()
    code, _ = await run_cli(path, sim.base_url)  # without the option: the old behaviour
    assert sim.stats.tasks_created == 2 and code == 0
