"""docs/SCALING.md's Slurm array recipe, run on a real one-node Slurm against the simulator.

    python tests/slurm/slurm_array.py [--jobs 400] [--keep]

Installs Debian's ``slurm-wlm`` and ``munge`` where missing (apt-get), starts munged,
slurmctld and slurmd by hand in a temporary folder (a generated ``slurm.conf`` for this
host, free loopback ports, a private munge socket: nothing of the machine's own
configuration is read or changed), starts ``python -m runner.sim`` on a free port, and
writes a campaign of ``--jobs`` jobs. The array script is the one printed in
``docs/SCALING.md`` (section "Slurm array"), with only the edits in :data:`EDITS` and the
``sbatch`` options in :func:`sbatch_options` (a 2-minute limit and ``TERM@60``, so every
task is signalled and requeued). Midway it cancels array task 2 and resubmits that index
alone (``sbatch --array=2``), as the doc says to. When every task has ended it checks:

- every Slurm task ended as expected (``COMPLETED``, exit 0; task 2 ``CANCELLED``), every
  SIGTERM ended in exit 4 and a requeue, and each task's log kept every run
  (``--open-mode=append``);
- every job is done exactly once across the campaign (``--report``'s
  ``campaign-results.jsonl`` and ``campaign-summary.json``);
- every image on disk has the sha256 the simulator served for its task;
- nothing was paid twice: the simulator made one task per prompt.

It prints one JSON object of figures (runs, requeues, jobs, images, tasks per prompt) and
exits 0; 1 when a check fails (the folder is kept and named). Where the cluster cannot run
(not Linux, not root, the packages cannot be installed, a daemon does not start) it
prints ``SKIP: <reason>`` and exits 0. ``.ci/run`` runs it after the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SCALING.md"
SECTION = "### Slurm array"

SHARDS = 4
#: the simulator's key: 12 live tasks and 2,400 requests a minute; P = 4 tasks run at
#: once, so each shard gets 1/4 of that, as the recipe computes for the real key
KEY_TASKS, KEY_RATE = 12, 2400
#: the recipe's lines this test changes (each must be found exactly once): the doc's N,
#: manifest and limits are a real campaign's; here, a small one against the simulator
EDITS = (
    ("\nN=8\n", f"\nN={SHARDS}\n"),
    ("/shared/spring/spring.yaml", "{manifest}"),
    (
        "--concurrency 250 --rate 2500",
        f"--concurrency {KEY_TASKS // SHARDS} --rate {KEY_RATE // SHARDS}",
    ),
    ("--drain 60s", "--drain 20s"),
)
TIME_LIMIT, SIGNAL = "2", "TERM@60"
#: simulated seconds run this much faster: a 2K task takes 2.6-3.8 s
TIME_SCALE = 0.1
CANCEL_AFTER_DONE = 10  # cancel task 2 once its shard has this many jobs done
WAIT_CLUSTER_S, WAIT_ALL_S = 60.0, 900.0
KEY = "slurm-test-key-0123456789"


class Skip(Exception):
    """The cluster cannot run here; the reason is printed and the run is skipped."""


class Failed(Exception):
    """A check failed."""


def log(message: str) -> None:
    print(f"[slurm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the recipe ---------------------------------------------------------------------------


def recipe(manifest: Path) -> str:
    """The Slurm array script of docs/SCALING.md, with :data:`EDITS` applied."""
    text = DOC.read_text()
    start = text.index(SECTION)
    begin = text.index("```bash\n", start) + len("```bash\n")
    script = text[begin : text.index("\n```\n", begin) + 1]
    for old, new in EDITS:
        if script.count(old) != 1:
            raise Failed(f"docs/SCALING.md's Slurm script no longer has {old.strip()!r} once")
        script = script.replace(old, new.format(manifest=manifest))
    return script


def sbatch_options(array: str) -> list[str]:
    """Command-line options override the script's #SBATCH lines: a short limit and an
    early signal, so that SIGTERM and requeue happen within minutes; less memory than a
    real campaign asks, so that every task fits on a small machine at once."""
    return [f"--array={array}", f"--time={TIME_LIMIT}", f"--signal={SIGNAL}", "--mem=200M"]


# -- the cluster --------------------------------------------------------------------------

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("munge", "sbatch", "scontrol", "squeue", "scancel", "sinfo", "srun")


def find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def install() -> None:
    """apt-get install the packages where a program is missing; Skip if that fails.
    Services are kept from starting while apt-get runs (a policy-rc.d answering 101,
    only if the machine has none of its own)."""
    if all(find(p) for p in DAEMONS + CLIENTS):
        return
    if not shutil.which("apt-get"):
        raise Skip("slurm-wlm and munge are not installed and there is no apt-get")
    log(f"installing {' '.join(PACKAGES)} (apt-get)")
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        own_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise Skip(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    missing = [p for p in DAEMONS + CLIENTS if not find(p)]
    if missing:
        raise Skip(f"installed, yet {', '.join(missing)} not found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise Skip("no MemTotal in /proc/meminfo")


@dataclass
class Cluster:
    """munged, slurmctld and slurmd of one node, all under ``work``."""

    work: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.work / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.work / sub).mkdir()
        key = self.work / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = self.work / "munge.socket"
        self._daemon(
            "munged",
            "--foreground",
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={self.work / 'munged.pid'}",
            f"--log-file={self.work / 'log' / 'munged.log'}",
            f"--seed-file={self.work / 'munged.seed'}",
        )
        self._wait(lambda: sock.exists(), "munged to open its socket")
        self.conf.write_text(self._slurm_conf(sock))
        self._daemon("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._daemon("slurmd", "-D", "-N", self.node, "-f", str(self.conf))
        self._wait(lambda: self._node_state() == "idle", f"node {self.node} to be idle")
        log(f"cluster up: node {self.node}, {self.version()}, {self.work}")

    def _slurm_conf(self, sock: Path) -> str:
        w = self.work
        return "\n".join(
            [
                "ClusterName=runnertest",
                f"SlurmctldHost={self.node}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # cred_expire is also how long a requeued job waits (120 s by default)
                f"AuthInfo=socket={sock},cred_expire=10",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"StateSaveLocation={w / 'state'}",
                f"SlurmdSpoolDir={w / 'spool'}",
                f"SlurmctldPidFile={w / 'slurmctld.pid'}",
                f"SlurmdPidFile={w / 'slurmd.pid'}",
                f"SlurmctldLogFile={w / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={w / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=5,bf_interval=5",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "MpiDefault=none",
                "SwitchType=switch/none",
                "ReturnToService=2",
                # the recipe's #SBATCH --requeue is what allows its scontrol requeue
                "JobRequeue=0",
                "MinJobAge=3600",
                "KillWait=30",
                "InactiveLimit=0",
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
                f"RealMemory={memory_mb() * 9 // 10} State=UNKNOWN",
                # 4 tasks share the 2 cores: the runner is mostly waiting on the network
                f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE "
                "State=UP OverSubscribe=FORCE:4",
                "",
            ]
        )

    def _daemon(self, name: str, *args: str) -> None:
        program = find(name)
        assert program is not None
        out = (self.work / "log" / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen(
            [program, *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.work
        )

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT_CLUSTER_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise Skip(f"{name} exited with {proc.returncode}: {self._tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise Skip(f"gave up waiting for {what}: {self._tail('slurmctld')}")

    def _tail(self, name: str) -> str:
        path = self.work / "log" / f"{name}.out"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-4:]) or "(no output)"

    def _node_state(self) -> str:
        done = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return done.stdout.strip().rstrip("*")

    def version(self) -> str:
        return self.run("sinfo", "--version").stdout.strip()

    def run(self, *cmd: str, check: bool = True, cwd: Path | None = None) -> Any:
        done = subprocess.run(
            list(cmd), env=self.env(), capture_output=True, text=True, check=False, cwd=cwd
        )
        if check and done.returncode != 0:
            raise Failed(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def stop(self) -> None:
        if self.procs.get("slurmctld") is not None:
            with contextlib.suppress(Exception):  # let every job end before slurmd goes
                self.run("scancel", "--user=root", check=False)
                for _ in range(90):
                    if not self.run("squeue", "-h", check=False).stdout.strip():
                        break
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the simulator and the campaign -------------------------------------------------------


@dataclass
class Sim:
    proc: subprocess.Popen[str]
    base_url: str

    @classmethod
    def start(cls, work: Path) -> Sim:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "runner.sim", "--port", "0", "--seed", "16",
                "--time-scale", str(TIME_SCALE), "--concurrency", str(KEY_TASKS),
                "--rate", str(KEY_RATE),
            ],
            stdout=subprocess.PIPE,
            stderr=(work / "sim.log").open("w"),
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise Failed(f"the simulator did not start: {(work / 'sim.log').read_text()}")
        return cls(proc, base_url)

    def get(self, path: str) -> Any:
        root = self.base_url.split("/api/")[0]
        with urllib.request.urlopen(root + path, timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


def write_campaign(folder: Path, base_url: str, jobs: int) -> Path:
    folder.mkdir()
    lines = [
        "name: slurm-array",
        f"api: {{base_url: {json.dumps(base_url)}}}",
        "polling: {initial_delay: 2s, interval: 0.5s}",
        "output: {dir: out}",
        "jobs:",
    ]
    lines += [
        f"  - {{id: shot-{i:03d}, prompt: {json.dumps(f'a studio photo, variant {i}')}}}"
        for i in range(jobs)
    ]
    path = folder / "campaign.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def python_shim(folder: Path) -> Path:
    """A ``python`` on PATH for the recipe's ``srun python -m runner``: this interpreter."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    return bin_dir


# -- the run ------------------------------------------------------------------------------


def job_fields(cluster: Cluster, job: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one dict per (array) task."""
    out = cluster.run("scontrol", "show", "job", "-o", job).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]


def queued(cluster: Cluster, jobs: list[str]) -> dict[str, str]:
    """Task id (``12_3``) -> state, of the tasks still pending or running."""
    out = cluster.run("squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i %T", check=False)
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def done_in(ledger: Path) -> int:
    try:
        return ledger.read_bytes().count(b'"e":"done"')
    except FileNotFoundError:
        return 0


def submit(cluster: Cluster, script: Path, array: str) -> str:
    options = sbatch_options(array)
    done = cluster.run("sbatch", "--parsable", *options, str(script), cwd=script.parent)
    return str(done.stdout.strip().split(";")[0])


def drive(cluster: Cluster, folder: Path, script: Path) -> tuple[str, str]:
    """Submit the array, cancel task 2 midway and resubmit it alone; wait for the end.
    Returns the array's and the resubmission's job ids."""
    array = submit(cluster, script, f"0-{SHARDS - 1}%{SHARDS}")
    log(f"array {array} submitted: {SHARDS} tasks, limit {TIME_LIMIT} min, {SIGNAL}")
    shard2 = folder / "out" / "shards" / f"2-of-{SHARDS}" / "ledger.jsonl"
    again = ""
    deadline = time.monotonic() + WAIT_ALL_S
    last_note = ""
    while time.monotonic() < deadline:
        states = queued(cluster, [array, again] if again else [array])
        if not again:
            task2 = states.get(f"{array}_2")
            if task2 == "RUNNING" and done_in(shard2) >= CANCEL_AFTER_DONE:
                cluster.run("scancel", f"{array}_2")
                log(f"task {array}_2 cancelled with {done_in(shard2)} jobs of its shard done")
                for _ in range(120):  # until it has ended (its runner drains first)
                    if f"{array}_2" not in queued(cluster, [array]):
                        break
                    time.sleep(0.5)
                again = submit(cluster, script, "2")
                log(f"index 2 resubmitted alone: job {again} (sbatch --array=2)")
                continue
        elif not states:
            return array, again
        note = " ".join(f"{k}:{v}" for k, v in sorted(states.items()))
        if note != last_note:
            log(note)
            last_note = note
        time.sleep(2)
    raise Failed(f"the array had not ended after {WAIT_ALL_S:.0f} s")


@dataclass
class Run:
    """One run of the runner in a task's log."""

    code: int
    remaining: int
    started: float  # the engine's start: the closing line's time less the run's wall time
    ended: float
    signalled: float | None  # when it logged the SIGTERM

    @property
    def signalled_after_s(self) -> float | None:
        return None if self.signalled is None else self.signalled - self.started


def runs_in(log_file: Path) -> list[Run]:
    """The runner's runs in one task's log (its JSON lines; every run ends with the
    closing line ``finished with exit code N``, which carries its summary)."""
    runs: list[Run] = []
    stopped: float | None = None
    for line in log_file.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        t, msg = float(record["t"]), str(record["msg"])
        if msg.startswith("stopping (SIGTERM)"):
            stopped = t
        found = re.match(r"finished with exit code (\d+)", msg)
        if found:
            summary = record.get("summary") or {}
            started = t - float(summary.get("wall_time_s", 0.0))
            remaining = int(summary.get("run", {}).get("remaining", 0))
            runs.append(Run(int(found[1]), remaining, started, t, stopped))
            stopped = None
    return runs


def check(
    cluster: Cluster, sim: Sim, folder: Path, manifest: Path, array: str, again: str, jobs: int
) -> dict[str, Any]:
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    # Slurm's side: how every task ended, its runs and requeues
    tasks = {f"{array}_{t['ArrayTaskId']}": t for t in job_fields(cluster, array)}
    tasks.update({f"{again}_{t['ArrayTaskId']}": t for t in job_fields(cluster, again)})
    requeues = 0
    runs: list[Run] = []
    gaps: list[float] = []  # from a run's end to the start of the task's next run
    limit_signals: list[float] = []  # seconds into a run when the time limit's SIGTERM came
    for name, task in sorted(tasks.items()):
        state, code, restarts = task["JobState"], task["ExitCode"], int(task["Restarts"])
        requeues += restarts
        cancelled = name == f"{array}_2"
        expect(state == ("CANCELLED" if cancelled else "COMPLETED"), f"{name} ended {state}")
        if not cancelled:
            expect(code == "0:0", f"{name} exit {code}")
            expect(restarts >= 1 or name.startswith(again), f"{name} was never requeued")
        mine = runs_in(folder / f"slurm-{name}.out")
        runs += mine
        if not cancelled:  # the time limit's signals (task 2's last one was scancel's)
            limit_signals += [r.signalled_after_s for r in mine if r.signalled_after_s]
        said = (folder / f"slurm-{name}.out").read_text().count("array.sh: task ")
        if not cancelled:  # the log kept every run: --open-mode=append
            logged = f"{name}: {len(mine)} runs logged, {restarts + 1} made"
            expect(len(mine) == restarts + 1, logged)
            expect(said == restarts + 1, f"{name}: the script reported {said} runs")
            expect(bool(mine) and mine[-1].code == 0, f"{name}: last run did not end with 0")
        for r in mine:  # a SIGTERM ends in exit 4, or 0 when the drain finished the shard
            expected = 0 if r.signalled is None or not r.remaining else 4
            expect(r.code == expected, f"{name}: a run with {r.remaining} left ended {r.code}")
        gaps += [b.started - a.ended for a, b in pairwise(mine)]
    codes = Counter(r.code for r in runs)
    expect(codes[4] >= 1 and requeues >= 1, "no run was signalled and requeued")

    # the campaign's side
    report = subprocess.run(
        [sys.executable, "-m", "runner", str(manifest), "--report"],
        capture_output=True, text=True, check=False, cwd=folder,
    )  # fmt: skip
    if report.returncode != 0:
        raise Failed(f"--report: exit {report.returncode}: {report.stderr}")
    out = folder / "out"
    summary = json.loads((out / "campaign-summary.json").read_text())
    results = [json.loads(x) for x in (out / "campaign-results.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in results]
    expect(summary["jobs"] == {"total": jobs, "done": jobs}, f"jobs: {summary['jobs']}")
    expect(len(ids) == len(set(ids)) == jobs, f"{len(ids)} results, {len(set(ids))} distinct")
    expect(all(r["state"] == "done" for r in results), "a job is not done")
    verified = 0
    served: dict[str, list[str]] = {}
    for r in results:
        task_id = r["task_id"]
        if task_id not in served:
            served[task_id] = sim.get(f"/_sim/tasks/{task_id}")["sha256"]
        for index, f in enumerate(r["files"]):
            digest = hashlib.sha256((out / f["path"]).read_bytes()).hexdigest()
            if digest == f["sha256"] == served[task_id][index]:
                verified += 1
            else:
                problems.append(f"{f['path']}: sha256 differs from the simulator's")
    on_disk = len([*out.glob("images/*/*"), *out.glob("shards/*/images/*/*")])
    expect(verified == jobs == on_disk, f"{verified} images verified, {on_disk} on disk")
    stats = sim.get("/_sim/stats")
    per_prompt = Counter(stats["submissions_per_prompt"].values())
    expect(stats["tasks_created"] == jobs, f"{stats['tasks_created']} tasks for {jobs} jobs")
    expect(per_prompt == Counter({1: jobs}), f"tasks per prompt: {dict(per_prompt)}")
    expect(summary["images_paid"] == jobs, f"images paid: {summary['images_paid']}")

    signalled = limit_signals
    to_4 = sum(1 for r in runs if r.signalled is not None and r.code == 4)
    to_exit = [r.ended - r.signalled for r in runs if r.signalled is not None]
    figures = {
        "slurm": cluster.version(),
        "jobs": jobs,
        "shards": SHARDS,
        "time_limit_min": int(TIME_LIMIT),
        "signal": SIGNAL,
        "runs": len(runs),
        "run_exit_codes": {str(k): v for k, v in sorted(codes.items())},
        "sigterms": sum(1 for r in runs if r.signalled is not None),
        "sigterm_then_exit_4": to_4,
        "sigterm_to_exit_s": round(max(to_exit), 1) if to_exit else None,
        "sigterm_after_s": [round(min(signalled)), round(max(signalled))] if signalled else None,
        "requeues": requeues,
        "requeue_gap_s": [round(min(gaps)), round(max(gaps))] if gaps else None,
        "resubmitted": f"index 2 alone, job {again}",
        "done": summary["jobs"].get("done", 0),
        "images": on_disk,
        "images_verified": verified,
        "tasks_created": stats["tasks_created"],
        "tasks_per_prompt": {str(k): v for k, v in per_prompt.items()},
        "generate_requests": sum(stats["requests"].get("generate", {}).values()),
    }
    if problems:
        raise Failed("; ".join(problems[:20]) + f"\nfigures: {json.dumps(figures)}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("SKIP: the Slurm test needs Linux")
        return 0
    if os.geteuid() != 0:
        print("SKIP: the Slurm test starts munged, slurmctld and slurmd as root; not root")
        return 0
    work = Path(tempfile.mkdtemp(prefix="runner-slurm-"))
    cluster = Cluster(work)
    sim: Sim | None = None
    started = time.monotonic()
    keep = args.keep
    try:
        try:
            install()
            cluster.start()
        except Skip as exc:
            print(f"SKIP: the Slurm daemons cannot run here: {exc}")
            return 0
        sim = Sim.start(work)
        folder = work / "campaign"
        manifest = write_campaign(folder, sim.base_url, args.jobs)
        os.environ["PATH"] = f"{python_shim(work)}:{os.environ['PATH']}"
        os.environ["APIXO_API_KEY"] = KEY
        script = folder / "array.sh"
        script.write_text(recipe(manifest))
        array, again = drive(cluster, folder, script)
        figures = check(cluster, sim, folder, manifest, array, again, args.jobs)
        figures["wall_s"] = round(time.monotonic() - started)
        print(json.dumps(figures))
        return 0
    except Failed as exc:
        keep = True
        print(f"FAILED: {exc}\n(everything is in {work})", file=sys.stderr)
        for path in sorted(work.glob("campaign/slurm-*.out"))[:8]:
            tail = path.read_text(errors="replace").splitlines()[-6:]
            print(f"--- {path.name}\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        if sim is not None:
            sim.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
