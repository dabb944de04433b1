"""A real headless Chromium driven by Selenium, for the report's tests.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; ``.ci/run`` installs them) and the ``selenium`` test extra.
Without them a test is skipped on a developer's machine and fails in CI (``CI=true``).
Both paths are given to Selenium, so it never looks for (or downloads) a driver itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
INSTALL = "apt-get install -y chromium chromium-driver; pip install -e '.[test]'"


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}, so report.html cannot be checked in a browser; {INSTALL}")
    pytest.skip(f"{why}; {INSTALL}")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found is None and Path(f"/usr/bin/{name}").is_file():
            found = f"/usr/bin/{name}"
        if found:
            return found
    return None


def chrome(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A started browser (closed when the generator is), or a skip."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    browser, driver = _find("chromium", "chromium-browser"), _find("chromedriver")
    if browser is None or driver is None:
        _missing("chromium or chromedriver is missing")
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    d = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        d.set_window_size(width, height)
        yield d
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_report(d: Any, page: Path, fragment: str = "") -> None:
    """Open ``page`` (a file) and wait until its script has rendered the gallery."""
    from selenium.webdriver.support.ui import WebDriverWait

    d.get(page.resolve().as_uri() + fragment)
    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.body.dataset.ready"))


def rendered(d: Any, action: Any) -> None:
    """Do ``action()`` (a click, a choice...) and wait until the gallery has rendered anew."""
    from selenium.webdriver.support.ui import WebDriverWait

    d.execute_script("document.body.dataset.shown = ''")
    action()
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.body.dataset.shown"))


def go(d: Any, fragment: str) -> None:
    """Change the view (the URL's fragment) and wait for the gallery to render it."""
    rendered(d, lambda: d.execute_script("location.hash = arguments[0]", fragment))


def choose(d: Any, select_id: str, value: str) -> None:
    """Pick ``value`` in the toolbar's ``select_id`` as a user would; wait for the render."""
    from selenium.webdriver.support.ui import Select

    rendered(d, lambda: Select(d.find_element("id", select_id)).select_by_value(value))


#: make every image in the gallery load now (they are lazy) and return [src, naturalWidth]
LOAD_ALL = """
const done = arguments[arguments.length - 1];
const imgs = [...document.querySelectorAll(arguments[0])];
Promise.all(imgs.map((img) => new Promise((ok) => {
  if (img.complete && img.naturalWidth) return ok();
  img.addEventListener('load', ok); img.addEventListener('error', ok);
  img.loading = 'eager';
  if (img.complete && img.src) setTimeout(ok, 0);
}))).then(() => done(imgs.map((img) => [img.getAttribute('src'), img.naturalWidth])));
"""


def shown_jobs(d: Any) -> list[str]:
    """The ids of the jobs on the gallery's current page, in order."""
    ids = d.execute_script(
        "return [...document.querySelectorAll('#gallery .cell')].map((c) => c.dataset.job)"
    )
    return list(ids)
