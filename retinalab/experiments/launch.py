"""Run many ``retinalab`` processes side by side on one machine: N per GPU, or N on the CPU.

The networks of papers 000 and 002 are small: one training process leaves an H100-class GPU mostly
idle, so ``retinalab study --parallel N`` (and ``benchmarks/label_efficiency.py --parallel N``) run
N processes per visible GPU. Each process sees one GPU (``CUDA_VISIBLE_DEVICES``) and gets its share
of the CPU cores: ``OMP_NUM_THREADS`` and friends, ``torch.set_num_threads`` (:func:`limit_threads`)
and at most that many loader and cache workers. Without the limit every process starts one thread
per core and as many cache-building workers, and N processes on a 16-core box spend their first
minute fighting over the cores instead of feeding the GPU.

Each job's output goes to its own log file; one line is printed per finished job with the time it
took, the time elapsed and an estimate of what is left.

On the CPU, a job that runs this Python (``python script.py ...``, ``python -m module ...`` or
``python -c code``) starts from a fork server that has imported torch, Lightning, torchmetrics,
torchvision and albumentations once (Python's ``multiprocessing`` "forkserver"): importing them costs
about 9 s of a 2-core box per process, a sixth of a 1-minute benchmark fit. The job still gets a
process of its own (its own session, log, environment and exit code, as with ``subprocess``); only the
imports are shared. ``RETINALAB_FORK_SERVER=0`` starts every job as a plain subprocess, as do GPU slots
(CUDA must not be touched before the fork) and jobs whose environment differs from the one the fork
server started with in anything but the slot's thread and device variables (a module imported there
has read it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import ConfigError

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: imported once by the fork server CPU jobs start from (third-party only: retinalab's own modules are
#: imported by each job, after its environment is set)
PRELOAD = ("torch", "torchvision", "torchmetrics", "pytorch_lightning", "albumentations", "cv2")


@dataclass(frozen=True)
class Slot:
    """Where one process runs: ``gpu`` is a CUDA device index (``None``: the CPU); ``threads`` its CPU share."""

    gpu: int | None
    threads: int

    @property
    def device(self) -> str:
        return "cpu" if self.gpu is None else "cuda"

    @property
    def label(self) -> str:
        return "cpu" if self.gpu is None else f"gpu{self.gpu}"

    def env(self) -> dict[str, str]:
        env = {v: str(self.threads) for v in THREAD_VARS}
        env["RETINALAB_THREADS"] = str(self.threads)
        env["RETINALAB_DEVICE"] = self.device
        # the process sees one GPU as cuda:0 (or none at all on a CPU slot)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.gpu is None else str(self.gpu)
        return env


@dataclass
class Job:
    """One process to run: its command, its log file and extra environment."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process may use (none without CUDA)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def plan_slots(parallel: int, devices: str | None = None, cores: int | None = None) -> list[Slot]:
    """``parallel`` processes per GPU (or on the CPU), each with ``cores // processes`` threads.

    Args:
        parallel: processes per GPU; on the CPU, processes in all.
        devices: ``"cpu"``; ``"cuda"`` / ``"auto"`` / ``None`` (every visible GPU, the CPU when there is
            none; ``"cuda"`` fails without one); or GPU indices ``"0,2"``.
        cores: CPU cores to share (default: the ones this process may run on).

    Raises:
        ValueError: ``parallel < 1``, ``devices="cuda"`` without a GPU, or an index that is not visible.
    """
    if parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {parallel}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spec = (devices or "auto").strip().lower()
    if spec == "cpu":
        gpus: list[int | None] = [None]
    else:
        seen = visible_gpus()
        if spec in ("auto", "cuda", "gpu"):
            if not seen and spec != "auto":
                raise ConfigError(
                    f"--devices {devices}: no CUDA device is visible "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                )
            gpus = list(seen) or [None]
        else:
            try:
                gpus = [int(g) for g in spec.split(",") if g.strip()]
            except ValueError:
                raise ConfigError(f"--devices {devices!r}: use cpu, cuda, auto or GPU indices such as 0,1") from None
            missing = [g for g in gpus if g not in seen]
            if missing or not gpus:
                raise ConfigError(
                    f"--devices {devices}: GPU(s) {missing or gpus} not visible; visible: {seen or 'none'}"
                )
    n = parallel * len(gpus)
    threads = max(1, cores // n)
    return [Slot(g, threads) for _ in range(parallel) for g in gpus]


def limit_threads(threads: int | None = None) -> int | None:
    """Keep this process to ``threads`` CPU threads (default: ``$RETINALAB_THREADS``; nothing when unset):
    torch's intra- and inter-op pools and OpenCV's. Call it before any torch work."""
    if threads is None:
        threads = int(os.environ["RETINALAB_THREADS"]) if os.environ.get("RETINALAB_THREADS", "").isdigit() else None
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or parallel work already started: the intra-op limit stands
        pass
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover
        pass
    return threads


def cap_workers(datamodule: object, threads: int | None) -> None:
    """At most ``threads`` DataLoader and cache-building workers for a datamodule (``-1`` = all cores
    becomes ``threads``); fewer loader workers than configured can change augmentation streams."""
    if not threads:
        return
    for attr in ("num_workers", "cache_workers"):
        v = getattr(datamodule, attr, None)
        if isinstance(v, int) and (v < 0 or v > threads):
            setattr(datamodule, attr, threads)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def run_jobs(
    jobs: Sequence[Job],
    slots: Sequence[Slot],
    on_done: Callable[[Job, int, float], None] | None = None,
    prefix: str = "",
    poll: float = 0.2,
) -> dict[str, int]:
    """Run ``jobs`` as subprocesses, at most one per slot at a time; returns each job's exit code.

    A job's stdout and stderr go to ``job.log`` (appended). ``on_done(job, returncode, seconds)`` runs
    in this process as each job ends (write its result there: a run stopped later keeps it). On
    KeyboardInterrupt (or SIGTERM) the running jobs are stopped and the exception propagates.
    """
    pending = list(jobs)
    running: dict[subprocess.Popen | _Forked, tuple[Job, Slot, float, object]] = {}
    free = list(slots)
    codes: dict[str, int] = {}
    t0 = time.monotonic()
    total = len(jobs)

    def _terminate(*_args) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                fh = job.log.open("ab")
                slot_env = slot.env()
                env = {**os.environ, **slot_env, **job.env}
                if slot.gpu is None and _forkable(job.argv, env, slot_env.keys()):
                    proc = _Forked(job.argv, job.log, env)
                else:
                    proc = subprocess.Popen(
                        job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
                    )
                running[proc] = (job, slot, time.monotonic(), fh)
            time.sleep(poll)
            for proc in [p for p in running if p.poll() is not None]:
                job, slot, start, fh = running.pop(proc)
                fh.close()
                free.append(slot)
                took = time.monotonic() - start
                codes[job.name] = proc.returncode
                if on_done is not None:
                    on_done(job, proc.returncode, took)
                done = len(codes)
                elapsed = time.monotonic() - t0
                left = elapsed / done * (total - done) if done < total else 0.0
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; log {job.log})"
                print(
                    f"{prefix}{done}/{total} {job.name} {status} in {_fmt(took)} on {slot.label}; "
                    f"{_fmt(elapsed)} elapsed, ~{_fmt(left)} left",
                    flush=True,
                )
    except BaseException:
        for proc, (job, _slot, _start, fh) in running.items():
            _stop(proc)
            fh.close()
            codes.setdefault(job.name, proc.returncode if proc.returncode is not None else -signal.SIGTERM)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return codes


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop(proc: subprocess.Popen | _Forked, grace: float = 10.0) -> None:
    """SIGTERM the job's process group, then SIGKILL it after ``grace`` seconds."""
    try:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:  # a forked job that has not made its session yet
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def python_module(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


_server_env: dict[str, str] | None = None  # the environment the fork server started with (None: not started by us)


def _python_entry(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs this interpreter on a script, ``-m module`` or ``-c code``."""
    if len(argv) < 2 or os.path.realpath(argv[0]) != os.path.realpath(sys.executable):
        return False
    return argv[1] in ("-m", "-c") and len(argv) >= 3 or not argv[1].startswith("-")


def _forkable(argv: Sequence[str], env: dict[str, str], slot_vars: Iterable[str] = ()) -> bool:
    """Whether a CPU job can start from the fork server (:data:`PRELOAD`), starting it if need be: its
    environment ``env`` must equal the server's except in ``slot_vars``, what its slot sets (thread
    counts and device, read at run time, not at import: safe for a forked job)."""
    global _server_env
    if os.environ.get("RETINALAB_FORK_SERVER", "1").strip().lower() in ("0", "false", "no", "off") or not _python_entry(
        argv
    ):
        return False
    import multiprocessing as mp
    from multiprocessing import forkserver

    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - not Linux/macOS
        return False
    if _server_env is None:
        if forkserver._forkserver._forkserver_pid is not None:  # started by someone else, with other imports
            return False
        forkserver.set_forkserver_preload(list(PRELOAD))
        forkserver.ensure_running()
        _server_env = dict(os.environ)
    return all(env.get(k) == _server_env.get(k) for k in {*env, *_server_env} - set(slot_vars))


class _Forked:
    """A job started from the fork server, with the part of :class:`subprocess.Popen` that
    :func:`run_jobs` uses (``pid``, ``poll``, ``wait``, ``returncode``)."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        import multiprocessing as mp

        self._process = mp.get_context("forkserver").Process(
            target=_run_forked, args=(list(argv), str(log), env), daemon=False
        )
        # multiprocessing re-imports the parent's __main__ in the child (as __mp_main__) when it names a
        # module or a file: an unguarded script, or `python -m retinalab` itself, would run again there.
        # The job runs its own __main__, so the parent's is hidden while the child is made.
        main = sys.modules["__main__"]
        hidden = {k: main.__dict__.pop(k) for k in ("__spec__", "__file__") if k in main.__dict__}
        main.__spec__ = None
        try:
            self._process.start()
        finally:
            del main.__spec__
            main.__dict__.update(hidden)
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.pid, timeout)
        return self.returncode


def _run_forked(argv: list[str], log: str, env: dict[str, str]) -> None:
    """In the forked job: a session of its own, stdout and stderr to ``log``, ``env`` as the whole
    environment, the slot's thread limit, then ``argv`` run as ``python`` would run it."""
    import runpy

    os.setsid()
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    limit_threads()  # libgomp read OMP_NUM_THREADS when the server imported torch; the slot's share wins here
    if argv[1] in ("-m", "-c"):
        sys.path.insert(0, os.getcwd() if argv[1] == "-m" else "")  # as python puts it
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    elif argv[1] == "-c":
        sys.argv = ["-c", *argv[3:]]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv[1:])
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[1])))
        runpy.run_path(argv[1], run_name="__main__")
