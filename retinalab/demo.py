"""``make demo``: synthesise an IDRiD-layout set with the ``benchmark`` preset, train the ConvNet
baseline, the patch SSL-GAN and FixMatch (the semi-supervised control) on the same split (10 labelled
images, each with as many optimiser steps as the SSL-GAN's discriminator), test them on 100
photographs and print their metrics side by side, with 95% bootstrap intervals, for the final
weights and the best-on-validation checkpoint.

    python -m retinalab.demo [--data data/demo_idrid] [--num-images 541] [--size 768x510] [--conf conf]
                             [--trainer.max_epochs=2 ...]

Any other ``--section.key=value`` flag is passed to every ``retinalab fit`` run.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .lightning.cli import cli, finish_wandb, parse_size
from .synthetic import read_settings, write_synthetic

METHODS = (
    ("ConvNet (supervised)", "convnet/synthetic.yaml"),
    ("SSL-GAN (semi-supervised)", "ssl_gan/synthetic.yaml"),
    ("FixMatch (semi-supervised)", "fixmatch/synthetic.yaml"),
)
METRICS = ("test/image_auroc", "test/patch_auroc", "test/sensitivity", "test/specificity")
PRESET = "benchmark"


def _cell(r: dict[str, float], key: str) -> str:
    low, high = r.get(f"{key}_low"), r.get(f"{key}_high")
    return f"{r[key]:.3f} [{low:.2f}, {high:.2f}]" if low is not None else f"{r[key]:.3f}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    p = argparse.ArgumentParser(
        prog="python -m retinalab.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="data/demo_idrid", help="synthetic dataset folder (created if missing)")
    p.add_argument("--num-images", type=int, default=541, help="photographs to draw (about 55%% carry patch labels)")
    p.add_argument("--size", type=parse_size, default=(768, 510), help="WxH of each photograph (default 768x510)")
    p.add_argument("--conf", default="conf", help="folder holding the convnet/, ssl_gan/ and fixmatch/ configs")
    a, extra = p.parse_known_args(argv)
    bad = [x for x in extra if not x.startswith("--") or "=" not in x]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides for the fits must look like --trainer.max_epochs=2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = Path(a.data)
    settings = read_settings(data) if data.is_dir() else None
    if data.is_dir() and any(data.iterdir()) and settings is None:
        p.error(
            f"{data} exists but was not drawn by `retinalab synth` (no synthetic.json; an older demo's data?): "
            "remove it or pass --data NEW_FOLDER"
        )
    wanted = (PRESET, a.num_images, list(a.size))
    if settings is None or (settings["preset"]["name"], settings["num_images"], settings["size"]) != wanted:
        if settings is not None:
            print(
                f"{data} was drawn with other settings (preset {settings['preset']['name']}, {settings['num_images']} "
                "images "
                f"of {settings['size']}): drawing it again with the {PRESET} preset"
            )
        write_synthetic(
            "idrid",
            a.data,
            num_images=a.num_images,
            seed=0,
            size=a.size,
            workers=os.cpu_count() or 1,
            overwrite=True,
            preset=PRESET,
        )
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, cfg in METHODS:
        print(f"\n=== {name}: retinalab fit --config {a.conf}/{cfg} --data.root {a.data}\n", flush=True)
        run = cli(["fit", "--config", f"{a.conf}/{cfg}", "--data.root", a.data, *extra])
        # the final weights first (testing "best" loads that checkpoint into the model)
        last = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
        best = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path="best", verbose=False)[0]
        results[name] = {"final weights": last, "best on validation": best}
        finish_wandb(run.trainer)  # one W&B run per method
    counts = run.datamodule.summary()
    print(
        f"\nTest metrics on {counts['test']['images']} photographs ({counts['test']['images_diseased']} with lesions), "
        f"same split, {counts['labeled']['images']} labelled images; image score = sum of patch sigmoids; "
        "[95% bootstrap interval over test photographs]:"
    )
    print(f"| method | weights | {' | '.join(METRICS)} |")
    print(f"|---|---|{'---|' * len(METRICS)}")
    for name, by_weights in results.items():
        for weights, r in by_weights.items():
            cells = [_cell(r, k) if k.endswith("auroc") else f"{r.get(k, float('nan')):.3f}" for k in METRICS]
            print(f"| {name} | {weights} | {' | '.join(cells)} |")
    return results


if __name__ == "__main__":
    main()
