"""EGL speed (paper 002): fast EGL vs plain batched inference vs the naive loop, on one pool.

Pool: 10,000 random 48x48 patches scored by a LeNet (Caffe's, 2 classes). The naive loop (one forward
per patch and one backward per class) is timed on a 500-patch subset, after a 5-patch warm-up, and
scaled per patch (it is linear in the pool size); the methods timed once (scope all) are warmed up
too. EGL needs one forward pass, so plain inference is its floor. Model and patches are channels-last
(NHWC) for every method, as in `retinalab active` (the patch cache is NHWC): on the 2-core CPU this
halves LeNet's convolution time, for the naive loop too.

Batches: 256 patches on a CPU, 4096 on a GPU (the defaults of `retinalab active`'s ``score_batch_size``).
On a GPU a batch of 256 LeNet patches takes well under a millisecond, so the time goes to launching
kernels: the closed form launches about twice as many as inference (49 against 23 on an H100), which
makes it 1.5-2x inference at 256 and about 1.05x from 1024 up. ``--sweep`` (on by default on a GPU) prints
that ratio for batches of 256, 1024 and 4096.

    python benchmarks/egl.py [--pool 10000] [--naive 500] [--batch N] [--device cpu|cuda] [--sweep] [--no-channels-last]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine  # benchmarks/ is on sys.path when a script runs

from retinalab.active import egl, egl_naive
from retinalab.models.lenet import LeNet


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--naive", type=int, default=500)
    ap.add_argument("--batch", type=int, default=None, help="patches per batch (default: 256 on a CPU, 4096 on a GPU)")
    ap.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time fc EGL vs inference at batches of 256, 1024, 4096 (default: on a GPU)",
    )
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    a.batch = a.batch or (4096 if dev.type == "cuda" else 256)
    a.sweep = dev.type == "cuda" if a.sweep is None else a.sweep
    model = LeNet().to(dev).eval()
    pool = torch.randn(a.pool, 3, 48, 48, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        pool = pool.contiguous(memory_format=torch.channels_last)

    def split(size):
        return [pool[i : i + size] for i in range(0, a.pool, size)]

    def infer(batches):
        def run():
            with torch.no_grad():
                for b in batches:
                    torch.softmax(model(b), 1)

        return run

    def fast(scope, batches):
        return lambda: [egl(model, b, scope) for b in batches]

    sweep = []
    for size in (256, 1024, 4096) if a.sweep else ():
        bs = split(size)
        infer(bs)(), fast("fc", bs)()  # warm-up: kernel selection for this batch shape
        sweep.append((size, timed(infer(bs)), timed(fast("fc", bs))))
    batches = split(a.batch)
    infer(batches)(), fast("fc", batches)(), fast("last", batches)()  # warm-up
    t_inf = timed(infer(batches))
    t_fc = timed(fast("fc", batches))
    t_last = timed(fast("last", batches))
    for method in ("layerwise", "func"):  # timed once each below: warm them up first, as the naive loop
        egl(model, batches[0][:64], "all", chunk=64, method=method)
    t_layer = timed(lambda: [egl(model, b, "all", method="layerwise") for b in batches], repeat=1)
    t_all = (
        timed(lambda: [egl(model, b, "all", chunk=64, method="func") for b in batches[:2]], repeat=1)
        * a.pool
        / sum(map(len, batches[:2]))
    )
    sub = pool[: a.naive]
    for scope in ("fc", "all"):  # warm up the per-sample shapes (on a GPU: kernel selection, allocator) before timing
        egl_naive(model, sub[:5], scope)
    t_naive = timed(lambda: egl_naive(model, sub, "fc"), repeat=1) * a.pool / a.naive
    t_naive_all = timed(lambda: egl_naive(model, sub, "all"), repeat=1) * a.pool / a.naive

    print(f"machine: {machine()}, device {dev}")
    print(
        f"pool: {a.pool} patches 3x48x48, LeNet (20-50 conv, 500 FC), batches of {a.batch}, channels-last "
        f"{a.channels_last}\n"
    )
    print("| method | seconds for the pool | x inference | naive / method |")
    print("|---|---|---|---|")
    print(f"| plain batched inference (softmax) | {t_inf:.3f} | 1.00 | {t_naive / t_inf:.0f} |")
    print(f"| fast EGL, scope fc (closed form) | {t_fc:.3f} | {t_fc / t_inf:.2f} | {t_naive / t_fc:.0f} |")
    print(f"| fast EGL, scope last | {t_last:.3f} | {t_last / t_inf:.2f} | {t_naive / t_last:.0f} |")
    print(
        f"| EGL scope all, layerwise (exact, batched backward) | {t_layer:.2f} | {t_layer / t_inf:.1f} | "
        f"{t_naive_all / t_layer:.1f} (vs naive all) |"
    )
    print(
        f"| EGL scope all, torch.func vmap (chunks of 64; 2 batches, scaled) | {t_all:.1f} | {t_all / t_inf:.1f} | "
        f"{t_naive_all / t_all:.1f} (vs naive all) |"
    )
    print(f"| naive loop, scope fc ({a.naive} patches, scaled) | {t_naive:.1f} | {t_naive / t_inf:.0f} | 1 |")
    print(f"| naive loop, scope all ({a.naive} patches, scaled) | {t_naive_all:.1f} | {t_naive_all / t_inf:.0f} | 1 |")
    if sweep:
        print("\n| batch | inference (s) | fast EGL fc (s) | x inference |")
        print("|---|---|---|---|")
        for size, ti, tf in sweep:
            print(f"| {size} | {ti:.4f} | {tf:.4f} | {tf / ti:.2f} |")
    print(
        f"\nfast EGL (fc) = {t_fc / t_inf:.2f}x inference (target <= 1.5x); {t_naive / t_fc:.0f}x faster than the "
        "naive loop (target >= 30x)"
    )


if __name__ == "__main__":
    main()
