"""``make demo``: synthesise a small IDRiD-layout set, train the ConvNet baseline and the patch
SSL-GAN on the same split (10 labelled images), test both, print their metrics side by side.

    python -m retinalab.demo [--data data/demo_idrid] [--num-images 120] [--conf conf] [--trainer.max_epochs=2 ...]

Any other ``--section.key=value`` flag is passed to both ``retinalab fit`` runs.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .main import cli
from .synthetic import write_synthetic

METHODS = (("ConvNet (supervised)", "convnet/synthetic.yaml"), ("SSL-GAN (semi-supervised)", "ssl_gan/synthetic.yaml"))
METRICS = ("test/image_auroc", "test/patch_auroc", "test/sensitivity", "test/specificity")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(prog="python -m retinalab.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo_idrid", help="synthetic dataset folder (created if missing)")
    p.add_argument("--num-images", type=int, default=120)
    p.add_argument("--conf", default="conf", help="folder holding convnet/ and ssl_gan/ configs")
    a, extra = p.parse_known_args(argv)
    bad = [x for x in extra if not x.startswith("--") or "=" not in x]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides for the fits must look like --trainer.max_epochs=2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not Path(a.data).is_dir():
        write_synthetic("idrid", a.data, num_images=a.num_images, seed=0, workers=os.cpu_count() or 1)
    results: dict[str, dict[str, float]] = {}
    for name, cfg in METHODS:
        print(f"\n=== {name}: retinalab fit --config {a.conf}/{cfg} --data.root {a.data}\n", flush=True)
        run = cli(["fit", "--config", f"{a.conf}/{cfg}", "--data.root", a.data, *extra])
        out = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path="best", verbose=False)[0]
        results[name] = {k: float(out.get(k, float("nan"))) for k in METRICS}
    labeled = run.datamodule.summary()["labeled"]["images"]
    print(f"\nTest metrics, same split, {labeled} labelled images (image level: score = sum of patch sigmoids):")
    print(f"| method | {' | '.join(METRICS)} |")
    print(f"|---|{'---|' * len(METRICS)}")
    for name, r in results.items():
        print(f"| {name} | {' | '.join(f'{r[k]:.3f}' for k in METRICS)} |")
    return results


if __name__ == "__main__":
    main()
