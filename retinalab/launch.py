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
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


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
                raise ConfigError(f"--devices {devices}: no CUDA device is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
            gpus = list(seen) or [None]
        else:
            try:
                gpus = [int(g) for g in spec.split(",") if g.strip()]
            except ValueError:
                raise ConfigError(f"--devices {devices!r}: use cpu, cuda, auto or GPU indices such as 0,1") from None
            missing = [g for g in gpus if g not in seen]
            if missing or not gpus:
                raise ConfigError(f"--devices {devices}: GPU(s) {missing or gpus} not visible; visible: {seen or 'none'}")
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
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


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
    running: dict[subprocess.Popen, tuple[Job, Slot, float, object]] = {}
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
                env = {**os.environ, **slot.env(), **job.env}
                proc = subprocess.Popen(job.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
                print(f"{prefix}{done}/{total} {job.name} {status} in {_fmt(took)} on {slot.label}; "
                      f"{_fmt(elapsed)} elapsed, ~{_fmt(left)} left", flush=True)
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


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the job's process group, then SIGKILL it after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
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
