"""Building a cache folder once, atomically and in parallel: the patch cache and the exudate-patch cache
both go through here.

:func:`build_atomically` builds into a hidden temporary sibling and renames it into place only when
complete, one process at a time (:func:`build_lock`); :func:`run_image_jobs` runs one job per photograph
in a worker pool (:func:`parallel_map`, started from :func:`pool_context`) with a progress bar and the
reader's error policy.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from ..datasets.base import DataFormatError, OnError

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$RETINALAB_CACHE`` or ``~/.cache/retinalab``."""
    return Path(os.environ.get("RETINALAB_CACHE", Path.home() / ".cache" / "retinalab")).expanduser()


@contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``final``'s build (a ``flock`` on ``.<name>.lock`` beside it), so that
    processes started together (``retinalab study --parallel``) build a cache once and the others wait
    for it instead of each decoding every image with every core. The kernel drops the lock of a
    process that dies; the file goes when the build ends. Without ``fcntl`` (Windows) there is no lock: builds
    race, as before, safely."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    with open(lock, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s: waiting for it", final)
            start = time.perf_counter()
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("waited %.0f s for %s", time.perf_counter() - start, final)
        try:
            yield
        finally:
            # removed while held: a process still waiting on it finds the finished cache when it gets the
            # lock, and one arriving later sees the cache before it looks for a lock (if the build failed,
            # two processes may both build again; build_atomically's rename keeps that safe)
            lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Return ``final`` if complete; else run ``build(tmp)`` in a fresh temporary folder next to it and
    rename that to ``final``.

    ``final`` counts as complete when it holds ``index.json`` (written last by ``build``). A stale,
    incomplete ``final`` is replaced; one process builds at a time (:func:`build_lock`), and a
    process that waited uses what the first one built. On any error (or interrupt) the temporary
    folder is removed: nothing half-built is left behind.
    """
    if (final / "index.json").is_file():
        log.info("using cache %s", final)
        return final
    with build_lock(final):
        if (final / "index.json").is_file():  # built by the process that held the lock
            log.info("using cache %s", final)
            return final
        return _build_atomically(final, build)


class CacheMismatch(ValueError):
    """A cache folder whose ``index.json`` was written for other parameters or another number of images
    than the key in its name stands for (a folder copied or renamed by hand, or edited)."""


#: what opening a cache whose files were cut short or changed raises (``np.load``: "mmap length is greater
#: than file size"; a truncated ``index.json``; a missing array; :class:`CacheMismatch`)
DAMAGED = (ValueError, OSError, EOFError, KeyError)


def check_index(index: dict[str, Any], config: dict[str, Any], count: int | None = None) -> None:
    """Raise :class:`CacheMismatch` unless a cache's parsed ``index.json`` was written for ``config`` (the
    parameters as the build stored them) and ``count`` images (kept or skipped; ``None``: not checked)."""
    built, wanted = index.get("config") or {}, json.loads(json.dumps(config))  # tuples as JSON has them
    differ = sorted(k for k in set(built) | set(wanted) if built.get(k) != wanted.get(k))
    if differ:
        raise CacheMismatch(f"its index.json was written for other parameters ({', '.join(differ)})")
    n = len(index.get("images", [])) + len(index.get("skipped", []))
    if count is not None and n != count:
        raise CacheMismatch(f"its index.json lists {n} images, not the {count} it was built from")


def open_built(
    final: Path,
    build: Callable[[Path], None],
    open_cache: Callable[[Path], T],
    config: dict[str, Any] | None = None,
    count: int | None = None,
) -> T:
    """:func:`build_atomically`, then ``open_cache(final)``. A complete cache that does not open (its files
    cut short or changed since: :data:`DAMAGED`), or whose ``index`` (the parsed ``index.json`` the opened
    cache keeps) does not match ``config`` and ``count`` (:func:`check_index`), is built again, with a
    warning saying so."""

    def opened(path: Path) -> T:
        cache = open_cache(path)
        if config is not None:
            check_index(cache.index, config, count)
        return cache

    path = build_atomically(final, build)  # a failing build raises as it is
    try:
        return opened(path)
    except DAMAGED as e:
        what = "does not match its name" if isinstance(e, CacheMismatch) else "is damaged"
        log.warning("the cache %s %s (%s: %s): building it again", final, what, type(e).__name__, e)
    with build_lock(final):
        try:
            return opened(final)  # another process rebuilt it meanwhile
        except DAMAGED:
            _discard(final)
            _build_atomically(final, build)
    return opened(final)


def _discard(folder: Path) -> None:
    """Remove ``folder`` (renamed away first, so that nobody opens it half-removed)."""
    if folder.exists():
        gone = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        os.rename(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    # a build holds the lock (build_lock): temporary folders of this cache are what killed builds left
    torn = list(final.parent.glob(f".{final.name}.tmp-*"))
    if torn:
        log.warning("removing %d folder(s) left by a build of %s that was killed: %s", len(torn), final.name, torn[0])
        for folder in torn:
            shutil.rmtree(folder, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        if final.exists() and not (final / "index.json").is_file():
            shutil.rmtree(final)  # left by a build that died before it completed
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "index.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def create_array(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """A new ``.npy`` file at ``path`` of ``shape`` and ``dtype``, mapped for writing, its every block
    allocated now (``posix_fallocate``): a full disk fails here, with ``ENOSPC``, instead of killing the
    process with ``SIGBUS`` when a page of the map is written later. The error names the cache being built
    (the temporary folder is removed as it goes up) and the space the array needs."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # cannot reserve: write as is
                    raise
            finally:
                os.close(fd)
        return arr
    except OSError as e:
        folder = path.parent
        built = folder.parent / folder.name.split(".tmp-")[0].lstrip(".") if ".tmp-" in folder.name else path
        raise OSError(e.errno, f"{e.strerror} (needs {math.ceil(size / 2**20)} MiB)", str(built)) from None


def pool_context() -> mp.context.BaseContext:
    """The multiprocessing context for a worker pool started from this process.

    ``fork`` (fast: nothing is imported again) while this process has a single thread; ``forkserver``
    (else ``spawn``) once it has more. A forked child gets only the forking thread, and every lock
    another thread held at that moment stays locked in it: after a training run in the same process
    (torch's and OpenCV's thread pools running), the cache builder's workers hung for good in
    ``cv2.setNumThreads`` (seen: benchmarks/label_efficiency.py building its second preset's cache).
    """
    methods = mp.get_all_start_methods()
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: count what Python knows of
        import threading

        threads = threading.active_count()
    if "fork" in methods and threads == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


@contextmanager
def _caller_script_hidden(hide: bool) -> Iterator[None]:
    """While a worker pool starts from ``spawn`` or ``forkserver``: hide the caller's script (``__main__``'s
    ``__file__`` and ``__spec__``) from the workers. Each would otherwise import it again and run its top
    level: a user's script that calls retinalab there, without ``if __name__ == "__main__":``, started
    a build in every worker and hung for good. The workers run retinalab's own functions and need nothing
    from the script."""
    main = sys.modules.get("__main__")
    if not hide or main is None or not hasattr(main, "__file__"):
        yield
        return
    file, spec = main.__file__, getattr(main, "__spec__", None)
    del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        main.__file__, main.__spec__ = file, spec


@contextmanager
def parallel_map(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    num_workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Iterator[Any]]:
    """``fn`` over ``jobs``: in this process (``num_workers=0``) or a worker pool (``-1`` = all cores),
    results in completion order. The pool is torn down when the block exits, also on errors."""
    if num_workers < 0:
        num_workers = os.cpu_count() or 1
    if num_workers == 0:
        if initializer is not None:
            initializer(*initargs)
        yield map(fn, jobs)
        return
    ctx = pool_context()
    with _caller_script_hidden(ctx.get_start_method() != "fork"):
        pool = ctx.Pool(num_workers, initializer=initializer, initargs=initargs)
    try:
        yield pool.imap_unordered(fn, jobs, chunksize=max(1, min(16, len(jobs) // (4 * num_workers) or 1)))
    finally:
        pool.terminate()
        pool.join()


def run_image_jobs(
    fn: Callable[[Any], tuple[int, str | None, Any]],
    jobs: Sequence[Any],
    num_workers: int,
    on_error: OnError,
    desc: str,
    progress: bool = True,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> tuple[dict[int, Any], dict[int, str]]:
    """Run per-image jobs (``fn`` returns ``(index, error or None, value)``) with a progress bar and the
    error policy: a failure raises :class:`DataFormatError` (``on_error="raise"``) or is logged and
    collected. Returns ``(values, errors)`` by index.

    Raises:
        DataFormatError: for the first bad image with ``on_error="raise"``, or when every image failed.
    """
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)
    try:
        with parallel_map(fn, jobs, num_workers, initializer, initargs) as results:
            for i, err, value in results:
                bar.update()
                if err is not None:
                    if on_error == "raise":
                        raise DataFormatError(err)
                    log.warning("skipping: %s", err)
                    errors[i] = err
                values[i] = value
    finally:
        bar.close()
    if jobs and len(errors) == len(jobs):
        raise DataFormatError(
            f"none of the {len(jobs)} images could be read; first error: {next(iter(errors.values()))}"
        )
    return values, errors
