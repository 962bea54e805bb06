"""Label efficiency, CPU-sized: SSL-GAN vs ConvNet image-level AUROC at 10 and 40 labelled images.

The shape of paper 000's Table 2 on a synthetic IDRiD-layout set: for each seed (which fixes the
train/val/test split and, nested, the labelled images) and each label budget, both methods train on
the same split; the ConvNet sees only the labelled images, the SSL-GAN also the unlabelled rest.
Printed: mean +- std over seeds of the test image-level and patch-level AUROC, side by side.

    python benchmarks/label_efficiency.py [--images 150] [--seeds 0 1 2] [--labels 10 40]
                                          [--gan-epochs 8] [--convnet-epochs 30] [--width 0.25]

The synthetic data are drawn with the generator's default lesion size and contrast (not tuned).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retinalab.main import cli  # noqa: E402
from retinalab.synthetic import write_synthetic  # noqa: E402

METHODS = {"SSL-GAN": "conf/ssl_gan/synthetic.yaml", "ConvNet": "conf/convnet/synthetic.yaml"}


def run_one(method: str, root: Path, work: Path, n_labeled: int, seed: int, epochs: int, width: float) -> dict[str, float]:
    out = work / f"{method}-{n_labeled}-{seed}"
    args = [
        "fit", "--config", str(REPO / METHODS[method]), "--data.root", str(root),
        f"--data.num_labeled_images={n_labeled}", f"--data.seed={seed}", f"--seed_everything={seed}",
        f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={out}", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--model.width={width}",
        f"--data.split_file={out / 'split.json'}",
    ]
    if method == "SSL-GAN":
        args += [f"--model.gen_width={width}", f"--model.lr_decay_start={max(1, int(epochs * 2 / 3))}"]
    c = cli(args)
    res = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path="best", verbose=False)[0]
    return {k: float(v) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--gan-epochs", type=int, default=8)
    ap.add_argument("--convnet-epochs", type=int, default=30)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--work", help="keep data and runs here (default: a temporary folder)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-labeleff-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    os.chdir(work)  # the configs' relative checkpoint folders (runs/...) land in the work folder
    root = work / "idrid"
    if not root.exists():
        write_synthetic("idrid", root, num_images=a.images, seed=1234, workers=os.cpu_count() or 1)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    for seed in a.seeds:
        for n in a.labels:
            for method in METHODS:
                epochs = a.gan_epochs if method == "SSL-GAN" else a.convnet_epochs
                r = run_one(method, root, work / "runs", n, seed, epochs, a.width)
                results.setdefault((method, n), []).append(r)
                print(f"[{time.perf_counter() - t0:6.0f}s] seed {seed} labelled {n:3d} {method:8s} "
                      f"image AUROC {r['test/image_auroc']:.3f} patch AUROC {r['test/patch_auroc']:.3f}", flush=True)

    def cell(vals: list[float]) -> str:
        return f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}"

    total = a.images
    print(f"\nSynthetic IDRiD layout ({total} images drawn; seeds {a.seeds}); width {a.width}; "
          f"SSL-GAN {a.gan_epochs} epochs, ConvNet {a.convnet_epochs} epochs")
    for metric in ("test/image_auroc", "test/patch_auroc"):
        print(f"\n{metric} (mean +- std over {len(a.seeds)} seeds)\n")
        print("| method | " + " | ".join(f"{n} labelled" for n in a.labels) + " |")
        print("|---|" + "---|" * len(a.labels))
        for method in METHODS:
            print(f"| {method} | " + " | ".join(cell([r[metric] for r in results[(method, n)]]) for n in a.labels) + " |")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
