"""Scale: time and peak memory against the number of images, for every stage that touches them all.

For each size (default 200, 2,000 and 20,000 small synthetic EyePACS-layout photographs) and each
stage, a fresh process tree runs the stage while this script samples the resident memory of every
process in the tree (the main process and its cache-building or DataLoader workers) 20 times a
second:

* ``cache build``: :meth:`PatchCache.build` with all cores (decode, field of view, patches, thumbnails);
* ``cached epoch``: one shuffled epoch over every patch of the cache (``PatchDataset``, 2 workers);
* ``image epoch``: one epoch of whole images decoded in 2 DataLoader workers (``FundusImageDataset``,
  what the grading and segmentation datamodules stream);
* ``predict``: ``retinalab predict`` over a folder of that many photographs (ConvNet checkpoint, heatmap
  overlay PNGs, 2 loader workers), at most ``--predict-max`` images.

Peak memory is given two ways: the anonymous memory of the tree (heap, tensors: what cannot be dropped
under memory pressure) and the total resident set (adds file-backed pages: shared libraries and the
memory-mapped cache pages a process touched, which the kernel reclaims). Sums over processes count
shared library pages once per process. Time should grow linearly with the images, memory not at all.

    python benchmarks/scale.py [--work DIR] [--sizes 200 2000 20000] [--predict-max 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import machine  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = HERE / "conf" / "convnet_scale.yaml"
IMAGE_SIZE, PATCH = 128, 32  # 4x4 grid of 32 px patches at 128 px: the ConvNet's input size


# ---------------------------------------------------------------- memory sampling
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree_memory(root: int) -> tuple[int, int]:
    """(anonymous, total resident) kB summed over ``root`` and its descendants."""
    kids, todo, anon, total = _children(), [root], 0, 0
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        kb = {k: int(fields[k].split()[0]) for k in ("RssAnon", "VmRSS") if k in fields}
        anon += kb.get("RssAnon", 0)
        total += kb.get("VmRSS", 0)
    return anon, total


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; return wall seconds, peak anonymous and total MB of its process tree, and the last
    stdout line parsed as JSON when it is JSON."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            a, t = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], a), max(peak[1], t)
            done.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    info: dict = {}
    lines = out.strip().splitlines()
    if lines:
        try:
            info = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return {"seconds": seconds, "anon_mb": peak[0] / 1024, "rss_mb": peak[1] / 1024, **info}


# ---------------------------------------------------------------- stages (run in a child process)
def _records(work: Path, n: int):
    from retinalab.datasets import read_eyepacs

    records = read_eyepacs(work / "data")
    if len(records) < n:
        raise SystemExit(f"{work / 'data'} holds {len(records)} images, fewer than {n}")
    return records[:n]


def _cache(records, work: Path, n: int, workers: int):
    from retinalab.preprocessing import PatchCache, PatchCacheConfig, PatchGrid

    cfg = PatchCacheConfig(grid=PatchGrid(IMAGE_SIZE, PATCH, PATCH, PATCH), thumb_size=64)
    return PatchCache.build(records, work / "cache", cfg, name=f"eyepacs{n}", num_workers=workers, progress=False)


def stage(name: str, work: Path, n: int) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    if name == "build":
        records = _records(work, n)
        t = time.perf_counter()
        cache = _cache(records, work, n, workers=-1)
        count = int(cache.patches.shape[0] * cache.patches.shape[1])
    elif name == "epoch":
        from retinalab.datamodules.patch import PatchDataset

        cache = _cache(_records(work, n), work, n, workers=0)  # built by the "build" stage: only opened here
        t = time.perf_counter()
        loader = DataLoader(PatchDataset(cache, np.arange(len(cache))), batch_size=256, shuffle=True, num_workers=2)
        count = sum(len(b["label"]) for b in loader)
    elif name == "images":
        from retinalab.datamodules.image_datasets import FundusImageDataset

        ds = FundusImageDataset(_records(work, n), IMAGE_SIZE, target="grade")
        t = time.perf_counter()
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
        count = sum(len(b["label"]) for b in loader)
    print(json.dumps({"items": count, "stage_seconds": time.perf_counter() - t}))


# ---------------------------------------------------------------- driver
def prepare(work: Path, n_max: int, predict_sizes: list[int]) -> Path:
    """Synthetic EyePACS-layout photographs, folders of links for ``predict``, and a ConvNet checkpoint."""
    py = [sys.executable, "-m", "retinalab"]
    data = work / "data"
    if not (data / ".complete").is_file() or int((data / ".complete").read_text()) < n_max:
        t = time.perf_counter()
        subprocess.run(
            [
                *py,
                "synth",
                "eyepacs",
                "--out",
                str(data),
                "--num-images",
                str(n_max),
                "--size",
                "192x128",
                "--seed",
                "7",
                "--workers",
                str(os.cpu_count()),
                "--overwrite",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        (data / ".complete").write_text(str(n_max))
        print(f"wrote {n_max} synthetic EyePACS-layout photographs of 192x128 in {time.perf_counter() - t:.0f} s")
    files = sorted((data / "train").glob("*.jpeg")) + sorted((data / "test").glob("*.jpeg"))
    for n in predict_sizes:
        folder = work / f"predict-{n}"
        if not folder.is_dir():
            tmp = work / f".predict-{n}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            for f in files[:n]:
                (tmp / f.name).symlink_to(f)
            tmp.rename(folder)
    ckpt = work / "convnet.ckpt"
    if not ckpt.is_file():
        # a checkpoint to predict with: one epoch on a small synthetic IDRiD set (the weights do not matter here)
        subprocess.run(
            [
                *py,
                "synth",
                "idrid",
                "--out",
                str(work / "idrid"),
                "--num-images",
                "30",
                "--size",
                "192x128",
                "--workers",
                "1",
                "--overwrite",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                *py,
                "fit",
                "--config",
                str(CONFIG),
                "--data.root",
                str(work / "idrid"),
                "--trainer.max_epochs",
                "1",
                "--trainer.default_root_dir",
                str(work / "fit"),
                "--trainer.logger",
                "false",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "RETINALAB_CACHE": str(work / "cache")},
        )
        found = sorted((work / "fit").rglob("*.ckpt"))
        os.replace(found[-1], ckpt)
    return ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/retinalab-scale"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 20000])
    ap.add_argument("--predict-max", type=int, default=10000)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        stage(a.stage, a.work, a.n)
        return

    a.work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(a.sizes)
    predict_sizes = [n for n in sizes if n <= a.predict_max]
    if a.predict_max not in predict_sizes and a.predict_max < sizes[-1]:
        predict_sizes.append(a.predict_max)
    t0 = time.perf_counter()
    ckpt = prepare(a.work, sizes[-1], predict_sizes)
    print(f"machine: {machine()}")
    print(
        f"data: synthetic EyePACS-layout JPEGs of 192x128; cache: {IMAGE_SIZE} px, 4x4 grid of {PATCH} px patches, 64 "
        "px thumbnails"
    )
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(a.work)]
    rows = []
    for n in sizes:
        # a fresh cache folder for every run: a build that finds its cache would measure nothing
        for old in (a.work / "cache").glob(f"eyepacs{n}-*"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
        for st, label in (
            ("build", "cache build (all cores)"),
            ("epoch", "cached epoch (2 workers)"),
            ("images", "image epoch (2 workers)"),
        ):
            r = measured([*me, "--stage", st, "--n", str(n)])
            rows.append((label, n, r))
            print(
                f"  {label:26s} {n:>6} images: {r['stage_seconds']:7.1f} s, peak anon {r['anon_mb']:6.0f} MB, rss "
                f"{r['rss_mb']:6.0f} MB",
                flush=True,
            )
    for n in predict_sizes:
        out = a.work / f"pred-{n}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [
            sys.executable,
            "-m",
            "retinalab",
            "predict",
            "--config",
            str(CONFIG),
            "--ckpt_path",
            str(ckpt),
            "--data.predict_folder",
            str(a.work / f"predict-{n}"),
            "--data.num_workers",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ]
        r = measured(cmd, {"RETINALAB_CACHE": str(a.work / "cache")})
        written = sum(1 for _ in open(out / "predictions" / "scores.csv")) - 1
        if written != n:
            raise SystemExit(f"predict wrote {written} rows for {n} images")
        r["stage_seconds"] = json.loads((out / "predictions" / "summary.json").read_text())["seconds"]
        rows.append(("retinalab predict (folder)", n, r))
        print(
            f"  {'retinalab predict':26s} {n:>6} images: {r['stage_seconds']:7.1f} s, peak anon {r['anon_mb']:6.0f} "
            f"MB, rss {r['rss_mb']:6.0f} MB",
            flush=True,
        )

    print("\n| stage | images | stage s | ms / image | process wall s | peak anon MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for label, n, r in rows:
        print(
            f"| {label} | {n:,} | {r['stage_seconds']:.1f} | {1000 * r['stage_seconds'] / n:.2f} | {r['seconds']:.1f} "
            f"| {r['anon_mb']:.0f} | {r['rss_mb']:.0f} |"
        )
    print("\nstage s: the stage itself; process wall s adds starting Python, importing torch and starting workers.\n")
    for label in dict.fromkeys(lab for lab, _, _ in rows):
        rs = [(n, r) for lab, n, r in rows if lab == label]
        (n0, r0), (n1, r1) = rs[0], rs[-1]
        print(
            f"{label}: {n1 / n0:.0f}x the images -> {r1['stage_seconds'] / r0['stage_seconds']:.1f}x the time, "
            f"{r1['anon_mb'] / r0['anon_mb']:.2f}x the peak anonymous memory, {r1['rss_mb'] / r0['rss_mb']:.2f}x the "
            "peak RSS"
        )
    print(f"\n{time.perf_counter() - t0:.0f} s in all (including the synthetic data when not already under --work)")


if __name__ == "__main__":
    main()
