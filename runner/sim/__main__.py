"""``python -m runner.sim``: run the simulator until SIGINT or SIGTERM.

Contract: every :class:`~runner.sim.config.SimConfig` field is an option, named after the
field without its ``_s`` unit suffix (``url_ttl_s`` -> ``--url-ttl``, ``p_429`` ->
``--p-429``), with the help text of the field. The first line written to stdout is the API
base URL (with the real port when ``--port 0``); anything else goes to stderr. Exit 0 on a
signal, 2 on a bad option or a state folder in use. ``--state-dir DIR`` (not a knob: fixed
for the server's life) keeps the tasks in ``DIR`` across server processes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from runner.sim.app import SimServer
from runner.sim.config import CHOICES, SimConfig
from runner.sim.store import StateFolderBusy


def option_name(field_name: str) -> str:
    """``url_ttl_s`` -> ``--url-ttl``: the CLI option of a SimConfig field."""
    stem = field_name.removesuffix("_s")
    return "--" + stem.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner.sim",
        description="Local simulator of the APIXO image-generation API.",
        argument_default=argparse.SUPPRESS,  # unset options keep SimConfig's defaults
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (8000)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep every task, the balance and the URL-signing key in DIR, so a restarted"
        " server finds the tasks of the previous one and bills over the folder's life"
        " (default: nothing kept)",
    )
    defaults = SimConfig()
    for f in fields(SimConfig):
        kind, default = f.metadata["kind"], getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "unset" if shown is None else shown
        # argparse expands %-formats in help: "2 %" must reach it as "2 %%".
        help_text = f"{f.metadata['help']} (default: {shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind == "range":
            kwargs.update(type=float, nargs=2, metavar=("LOW", "HIGH"))
        elif kind == "delays":
            kwargs.update(type=float, nargs="*", metavar="S")
        elif kind in ("int", "optint"):
            kwargs.update(type=int, metavar="N")
        elif kind == "choice":
            kwargs.update(type=str, choices=CHOICES[f.name], metavar=f.name.upper())
        elif kind == "optstr":
            kwargs.update(type=str, metavar="KEY" if f.name == "api_key" else "MODE")
        else:
            unit = "P" if kind == "prob" else "S" if f.name.endswith("_s") else "X"
            kwargs.update(type=float, metavar=unit)
        parser.add_argument(option_name(f.name), **kwargs)
    return parser


async def serve(config: SimConfig, host: str, port: int, state_dir: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM, printing the base URL first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(config, host=host, port=port, state_dir=state_dir) as sim:
        print(sim.base_url, flush=True)
        print(
            f"APIXO simulator on {sim.base_url} (time scale {config.time_scale:g}); "
            f"stats: GET {sim.origin}/_sim/stats, knobs: POST {sim.origin}/_sim/config",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    state_dir = args.pop("state_dir", None)
    try:
        config = SimConfig(**args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config, host, port, state_dir))
    except StateFolderBusy as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
