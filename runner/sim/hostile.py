"""Broken status answers: the ``p_hostile`` malformations and ``bad_status_first``.

Contract: both return a complete ``200`` response and count nothing (the server counts).
:func:`malformed_status` breaks a finished task's status answer the ``mode`` way (one of
:data:`~runner.sim.config.HOSTILE_MODES` but ``task_id``). :func:`unreadable_status`
gives the ``nth`` (1-based) unreadable answer of a task: odd ones are not JSON at all,
even ones are an envelope without ``data``, so a test sees both kinds deterministically.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def malformed_status(mode: str, data: dict[str, Any], origin: str) -> web.Response:
    """A 200 status answer of ``data`` broken the ``mode`` way; see the module docstring."""
    urls = {
        "url_file_scheme": "file:///etc/passwd",
        "url_ftp_scheme": "ftp://127.0.0.1/result.png",
        "url_traversal": f"{origin}/files/../../../../etc/passwd",
    }
    data = dict(data, state="success")
    body: Any = {"code": 200, "message": "success", "data": data}
    if mode == "not_json":
        return web.Response(status=200, text="<html>502 Bad Gateway</html>")
    if mode == "data_not_object":
        body["data"] = ["success", data["taskId"]]
    elif mode == "no_state":
        del data["state"]
    elif mode == "state_not_string":
        data["state"] = 3
    elif mode == "result_not_string":
        data["resultJson"] = {"resultUrls": [f"{origin}/files/x/0.png"]}
    elif mode == "result_not_json":
        data["resultJson"] = "{resultUrls: ["
    elif mode == "no_result_urls":
        data["resultJson"] = orjson.dumps({"resultUrls": "none"}).decode()
    elif mode in urls:
        data["resultJson"] = orjson.dumps({"resultUrls": [urls[mode]]}).decode()
    elif mode == "url_not_string":
        data["resultJson"] = orjson.dumps({"resultUrls": [{"href": 1}, None]}).decode()
    elif mode == "gigantic":
        data["failMsg"] = "x" * (3 << 20)
    elif mode == "other_task":
        data["taskId"] = "task_someone_else"
    return web.Response(status=200, body=orjson.dumps(body), content_type="application/json")


def unreadable_status(nth: int) -> web.Response:
    """The ``nth`` unreadable status answer of a task (1-based); see the module docstring."""
    if nth % 2:
        return web.Response(
            status=200, text="<html><body>upstream hiccup</body></html>", content_type="text/html"
        )
    body = orjson.dumps({"code": 200, "message": "success"})
    return web.Response(status=200, body=body, content_type="application/json")
