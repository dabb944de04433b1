"""A local simulator of the APIXO task API, following the API page (``apixo.md``).

Run it with ``python -m runner.sim --port 8000`` or in-process::

    async with SimServer(SimConfig(time_scale=0.01), port=0) as sim:
        sim.base_url   # http://127.0.0.1:<port>/api/v1
        sim.config     # mutable: changes apply from the next request
        sim.stats      # live counters
        sim.tasks      # task id -> record

``SimServer(config, host, port, state_dir=folder)`` keeps the tasks in ``folder`` across
server processes; :func:`read_billing` reads what such a folder billed, with no server.

Modules: :mod:`~runner.sim.config` (knobs), :mod:`~runner.sim.tasks` (validation, fate,
state from the clock), :mod:`~runner.sim.app` (server, limits, faults),
:mod:`~runner.sim.limits` (request window, live tasks), :mod:`~runner.sim.billing`
(images billed), :mod:`~runner.sim.store` (the state folder),
:mod:`~runner.sim.urls` (signed result URLs), :mod:`~runner.sim.files` (image downloads),
:mod:`~runner.sim.images` (PNG bytes), :mod:`~runner.sim.hostile` (broken answers),
:mod:`~runner.sim.callbacks` (webhooks), :mod:`~runner.sim.stats` (counters).
"""

from runner.sim.app import SimServer
from runner.sim.config import SimConfig
from runner.sim.images import image_shape, render_png
from runner.sim.stats import SimStats
from runner.sim.store import StateFolderBusy, read_billing

__all__ = [
    "SimConfig",
    "SimServer",
    "SimStats",
    "StateFolderBusy",
    "image_shape",
    "read_billing",
    "render_png",
]
