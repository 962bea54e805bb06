"""One writer per run folder: the lock every command that writes a run takes before it writes anything.

``retinalab fit``/``test``/``predict`` lock ``trainer.default_root_dir``; ``retinalab active`` (any oracle)
its ``out_dir``; the labelling page and the Label Studio import the run they label. A second writer is
refused with :class:`RunBusyError` naming the first (its command and pid), which the command line reports
in one line (exit 2), before it has written a byte. The lock is an exclusive advisory lock on
``<folder>/.lock`` (``fcntl.flock``), removed when the run ends; the kernel releases the lock when its
process ends, however it ends, so a ``.lock`` left by a killed process is taken over, with a warning naming it.

Under DDP and SLURM only the launch's rank 0 takes the lock (:func:`launch_rank`): the other ranks of the
same run write nothing of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process per run is then the user's to ensure
    fcntl = None

_HELD: dict[str, list] = {}  # lock file -> [descriptor, holder] of the locks this process holds
_GUARD = threading.Lock()
LOCK_NAME = ".lock"


class RunBusyError(UserError, RuntimeError):
    """Another process (or another session of this one) writes the same run folder."""


def launch_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``: torchrun; ``SLURM_PROCID``: srun;
    ``LOCAL_RANK``/``NODE_RANK``: Lightning's own launcher), before any process group exists; 0 when none is set."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", "0") or 0) + int(os.environ.get("LOCAL_RANK", "0") or 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _left_by(text: str) -> tuple[str, int | None]:
    """``"retinalab active (pid 123)"`` -> ``("retinalab active", 123)``."""
    holder, _, pid = text.rpartition(" (pid ")
    pid = pid.rstrip(")")
    return (holder or text), (int(pid) if pid.isdigit() else None)


@contextmanager
def run_lock(folder: str | Path, holder: str) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing the run in ``folder`` (created if missing, and removed again if the
    run left it empty), so that two processes,
    or two sessions of one process, never write the same run at once; the second is refused with
    :class:`RunBusyError` naming the first (``holder`` and its pid). A lock file left by a process that has
    ended is taken over with a warning."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the run folder ({e.strerror or e})") from None
    path = folder.resolve() / LOCK_NAME
    key = str(path)
    with _GUARD:
        if key in _HELD:
            raise RunBusyError(
                f"{folder} is in use by {_HELD[key][1]} (pid {os.getpid()}, this process); stop it first"
            )
        fd = _acquire(folder, path)
        left = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if left:
            _, pid = _left_by(left)
            if pid != os.getpid() and (pid is None or not _pid_alive(pid)):
                log.warning("%s: taking over the lock left by %s, which is no longer running", folder, left)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()})".encode(), 0)
        _HELD[key] = [fd, holder]
    try:
        yield
    finally:
        with _GUARD:
            del _HELD[key]
            # the lock file goes while it is still held: the folder is left as the run made it, and a
            # process that opened the old file meanwhile sees it is gone (_acquire) and tries again
            path.unlink(missing_ok=True)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if created:  # a run refused before it wrote anything leaves no folder behind
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _acquire(folder: Path, path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; :class:`RunBusyError` when another holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{folder}: cannot write the run's lock file {path} ({e.strerror or e})") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunBusyError(
                f"{folder} is in use by {who}; wait for it to finish, stop it, or write to another folder "
                f"(it holds {path})"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed this file as it finished: lock the new one


def rank0_lock(folder: str | Path, holder: str):
    """:func:`run_lock` on the launch's rank 0 (:func:`launch_rank`); nothing on the other ranks, nor for a
    remote folder (``s3://...``: no advisory locks there)."""
    return run_lock(folder, holder) if launch_rank() == 0 and "://" not in str(folder) else nullcontext()
