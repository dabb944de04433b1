"""Screenshots of the demo's report.html for the README: wide, phone width, lightbox.

    python scripts/screenshots.py            # writes docs/report-*.png

Runs the demo (``manifests/demo.yaml``, on the built-in simulator: no key, no network)
in a temporary folder, with the README's refused job added so that the problems section
has something to show, then has headless Chromium (Debian's ``chromium``) take the
pictures of its report.html.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = {
    # file name: (window width, height, URL fragment)
    "report-wide.png": (1280, 1180, ""),
    "report-phone.png": (420, 2400, ""),
    "report-lightbox.png": (1280, 760, "#job=teapot-dusk.16-9&img=0"),
}
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--force-device-scale-factor=1",
    "--virtual-time-budget=5000",
)


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.stderr.write("chromium is missing: apt-get install -y chromium\n")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = (ROOT / "manifests" / "demo.yaml").read_text()
        refused = (
            "  - id: swimsuit\n"
            '    prompt: "[fail:CONTENT_VIOLATION] a red swimsuit on a beach towel"\n'
        )
        demo = demo.replace("  - prompt: an espresso cup", refused + "  - prompt: an espresso cup")
        (work / "demo.yaml").write_text(demo)
        run = subprocess.run(
            [sys.executable, "-m", "runner", str(work / "demo.yaml"), "--no-progress"],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode not in (0, 1):
            sys.stderr.write(run.stderr)
            return 1
        page = (work / "out" / "demo" / "report.html").as_uri()
        for name, (width, height, fragment) in SHOTS.items():
            dest = ROOT / "docs" / name
            subprocess.run(
                [
                    chromium,
                    *FLAGS,
                    f"--user-data-dir={work / 'profile'}",
                    f"--window-size={width},{height}",
                    f"--screenshot={dest}",
                    page + fragment,
                ],
                capture_output=True,
                check=True,
                timeout=120,
            )
            sys.stdout.write(f"{dest.relative_to(ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
