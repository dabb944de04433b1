"""Callback mode behind a real nginx, configured with the snippets the docs give.

Each test starts nginx on a loopback port with a temporary configuration holding an
``nginx`` snippet taken from README.md or docs/CALLBACKS.md (so the tests follow the
docs), in front of runner's own webhook receiver. Skipped where nginx is not installed
(Debian: ``apt-get install nginx``; CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from runs import out_dir, prompts, run_cli, run_engine

from runner.api.answers import TaskStatus
from runner.api.callback import SECRET_NAME, CallbackReceiver, load_secret

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx)"
)

#: where the snippets in the docs send webhooks; the tests put the receiver's port there
DOCS_UPSTREAM = "127.0.0.1:8080"


def nginx_snippets(doc: Path) -> list[str]:
    """The fenced ``nginx`` blocks of a Markdown file, dedented."""
    blocks = re.findall(r"^( *)```nginx\n(.*?)^\1```", doc.read_text(), re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def readme_snippet() -> str:
    (snippet,) = nginx_snippets(ROOT / "README.md")
    return snippet


ALL_SNIPPETS = {
    "README": readme_snippet(),
    **{
        f"CALLBACKS-{i}": s for i, s in enumerate(nginx_snippets(ROOT / "docs" / "CALLBACKS.md"), 1)
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> dict[str, str]:
        """Stop nginx (so every log line is written) and return each log file's text."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish and flush
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return {p.name: p.read_text(errors="replace") for p in self.folder.glob("*.log")}


def nginx_config(snippet: str, upstream_port: int, port: int, folder: Path) -> str:
    """A whole nginx.conf around a docs snippet: lines before its ``location`` go into the
    http block (``log_format``), the location into a server on ``port``."""
    assert DOCS_UPSTREAM in snippet, "the snippet proxies to the receiver of the docs"
    snippet = snippet.replace(DOCS_UPSTREAM, f"127.0.0.1:{upstream_port}")
    snippet = snippet.replace("/var/log/nginx/", f"{folder}/")
    lines = snippet.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("location"))
    http_part, server_part = "\n".join(lines[:at]), "\n".join(lines[at:])
    temp = "\n".join(
        f"    {kind}_temp_path {folder}/tmp-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as nobody, who cannot enter pytest's folders.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
{temp}
{http_part}
    server {{
        listen 127.0.0.1:{port};
{textwrap.indent(server_part, "        ")}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str, int], Nginx]]:
    """Start nginx with a snippet in front of a receiver on ``upstream_port``."""
    started: list[Nginx] = []

    def start(snippet: str, upstream_port: int) -> Nginx:
        folder = tmp_path / f"nginx{len(started)}"
        folder.mkdir()
        port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(nginx_config(snippet, upstream_port, port, folder))
        assert NGINX is not None
        proc = subprocess.Popen(
            [NGINX, "-e", f"{folder}/error.log", "-p", str(folder), "-c", str(conf),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        server = Nginx(proc, port, folder)
        started.append(server)
        for _ in range(1000):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"nginx did not start: {err}\n{conf.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return server
            except OSError:
                time.sleep(0.01)
        raise AssertionError("nginx never listened")

    yield start
    for server in started:
        server.stop()


def _callback_api(rx_port: int, public_url: str) -> dict[str, object]:
    return {
        "mode": "callback",
        "callback": {"listen": f"127.0.0.1:{rx_port}", "public_url": public_url},
    }


def _envelope(task_id: str) -> dict[str, object]:
    data = {
        "taskId": task_id,
        "state": "success",
        "createTime": 1,
        "completeTime": 2,
        "resultJson": orjson.dumps({"resultUrls": ["http://127.0.0.1:9/x.png"]}).decode(),
    }
    return {"code": 200, "message": "success", "data": data}


def _assert_secret_absent(logs: dict[str, str], secret: str) -> None:
    assert {"access.log", "error.log"} <= logs.keys(), "nginx wrote its log files"
    for name, text in logs.items():
        assert secret not in text, f"the secret is in nginx's {name}"


async def test_a_run_behind_the_readme_snippet_gets_webhooks_and_nginx_logs_no_secret(
    sim, manifest, nginx
):
    """A callback run whose public_url is nginx (the README's snippet): the probe and the
    webhooks go through nginx, and after webhooks, forged posts and a 502 (no receiver
    any more) neither nginx log holds the secret."""
    rx_port = free_port()
    ng = nginx(readme_snippet(), rx_port)
    public = ng.url("/apixo")
    path = manifest(prompts(6), api=_callback_api(rx_port, public), limits={"concurrency": 6})
    code, engine = await run_engine(path, sim.base_url)
    assert code == 0
    secret = (out_dir(path) / SECRET_NAME).read_text().strip()
    assert {t.submission.callback_url for t in sim.tasks.values()} == {f"{public}/{secret}"}
    events = [orjson.loads(x) for x in (out_dir(path) / "ledger.jsonl").read_bytes().split()]
    delivered = [e for e in events if e["e"] == "delivered"]
    assert delivered, "webhooks reached the receiver through nginx"
    assert len(delivered) == 6 - engine.counters.polled_results
    # The run is over: nobody listens behind nginx, which answers 502 (and logs it).
    late = _envelope("task_late")
    async with aiohttp.ClientSession() as http, http.post(f"{public}/{secret}", json=late) as resp:
        assert resp.status == 502
    _assert_secret_absent(ng.stop(), secret)


@pytest.mark.parametrize("snippet", ALL_SNIPPETS.values(), ids=ALL_SNIPPETS.keys())
async def test_docs_snippets_refuse_forgeries_pass_webhooks_and_log_no_secret(
    tmp_path, nginx, snippet
):
    """Through each snippet of the docs: a valid webhook is accepted, forged posts are
    refused (by nginx or the receiver) with nothing accepted, a 502 is logged without
    the URL, and no log file holds the secret; a snippet with its own access log records
    the webhooks in it."""
    accepted: list[TaskStatus] = []

    def accept(status: TaskStatus) -> bool:
        accepted.append(status)
        return True

    rx_port = free_port()
    ng = nginx(snippet, rx_port)
    secret = load_secret(tmp_path)
    rx = CallbackReceiver(
        f"127.0.0.1:{rx_port}",
        ng.url("/apixo"),
        secret,
        known=lambda task_id: task_id == "task_known",
        accept=accept,
    )
    hook = f"{ng.url('/apixo')}/{secret}"
    forgeries = [
        ("POST", f"{ng.url('/apixo')}/{'A' * 43}", orjson.dumps(_envelope("task_known")), 404),
        ("POST", hook, orjson.dumps(_envelope("task_someone_else")), 404),
        ("GET", hook, b"", 405),
        ("POST", hook, b'{"pad": "' + b"x" * 100_000 + b'"}', 413),
        ("POST", hook, b"{not json", 400),
    ]
    async with rx, aiohttp.ClientSession() as http:
        await rx.prove_public_url()
        for method, url, body, expected in forgeries:
            async with http.request(method, url, data=body) as resp:
                assert resp.status == expected, (method, url.replace(secret, "<secret>"))
        assert accepted == []
        async with http.post(hook, json=_envelope("task_known")) as resp:
            assert resp.status == 200
        assert [s.task_id for s in accepted] == ["task_known"]
    async with aiohttp.ClientSession() as http, http.post(hook, json={}) as resp:
        assert resp.status == 502  # the receiver is gone
    logs = ng.stop()
    _assert_secret_absent(logs, secret)
    own = {name: text for name, text in logs.items() if name not in ("access.log", "error.log")}
    if "access_log" in snippet and "access_log off" not in snippet:
        (text,) = own.values()
        assert re.search(r"POST 200\b", text) and re.search(r"POST 502\b", text), text


async def test_a_plain_proxy_location_writes_the_secret_to_both_logs(tmp_path, nginx):
    """The control: the README's snippet without its two log lines leaks the secret into
    the access log (every webhook) and the error log (every 502), so the checks above
    can see a leak."""
    plain = "\n".join(line for line in readme_snippet().splitlines() if "_log " not in line)
    assert "access_log" not in plain and "error_log" not in plain
    rx_port = free_port()
    ng = nginx(plain, rx_port)
    secret = load_secret(tmp_path)
    rx = CallbackReceiver(
        f"127.0.0.1:{rx_port}", None, secret, known=lambda _: True, accept=lambda _: True
    )
    hook = f"{ng.url('/apixo')}/{secret}"
    async with aiohttp.ClientSession() as http:
        async with rx, http.post(hook, json=_envelope("task_known")) as resp:
            assert resp.status == 200
        async with http.post(hook, json=_envelope("task_known")) as resp:
            assert resp.status == 502
    logs = ng.stop()
    assert secret in logs["access.log"]
    assert secret in logs["error.log"]


async def test_a_public_url_whose_prefix_nginx_does_not_forward_exits_2_before_submitting(
    sim, manifest, nginx
):
    """The start-up probe through nginx with a wrong prefix: exit 2, a message naming the
    URL tried (secret hidden), nginx's 404 and what to check; nothing submitted."""
    rx_port = free_port()
    ng = nginx(readme_snippet(), rx_port)
    path = manifest(prompts(3), api=_callback_api(rx_port, ng.url("/hooks")))
    code, err = await run_cli(path, sim.base_url, "--no-progress")
    assert code == 2, err
    secret = (out_dir(path) / SECRET_NAME).read_text().strip()
    assert secret not in err
    tried = f"{ng.url('/hooks')}/<secret>"
    assert f"api.callback.public_url: the start-up probe posted to {tried}" in err
    assert "got HTTP 404 from nginx/" in err and "'404 Not Found'" in err
    assert "(here /hooks/)" in err and f"forwards that prefix to 127.0.0.1:{rx_port}" in err
    assert "nothing was submitted" in err
    assert sim.stats.count(endpoint="generate") == 0
    assert "Traceback" not in err
