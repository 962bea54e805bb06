"""``make demo``: synthesise an IDRiD-layout set with the ``benchmark`` preset, train the ConvNet
baseline, the patch SSL-GAN and FixMatch (the semi-supervised control) on the same split (10 labelled
images, each with as many optimiser steps as the SSL-GAN's discriminator), test them on 100
photographs and print their metrics side by side, with 95% bootstrap intervals, for the final
weights and the best-on-validation checkpoint.

    python -m retinalab.demo [--data data/demo_idrid] [--num-images 541] [--size 768x510] [--conf conf]
                             [--results runs/demo/results.md] [--check] [--verbose]
                             [--trainer.max_epochs=2 ...]

Any other ``--section.key=value`` flag is passed to every ``retinalab fit`` run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

from .lightning.cli import cli, finish_wandb, parse_size
from .synthetic import read_settings, write_synthetic
from .utils.io import write_text_atomic
from .utils.machine import cpu_name
from .utils.quiet import VERBOSE_ENV

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
    p.add_argument(
        "--results",
        default="runs/demo/results.md",
        help="where the closing table is written, with the command, date and machine ('' for nowhere)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a claim the docs make about the table does not hold on this run (CI runs it)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party notices too (retinalab.utils.quiet; RETINALAB_VERBOSE=1)",
    )
    a, extra = p.parse_known_args(argv)
    start = time.perf_counter()
    if a.verbose:
        os.environ[VERBOSE_ENV] = "1"
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
        # the final weights first (testing a checkpoint loads it into the model)
        last = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)[0]
        best_path = run.trainer.checkpoint_callback.best_model_path if run.trainer.checkpoint_callback else ""
        best = run.trainer.test(run.model, datamodule=run.datamodule, ckpt_path=best_path or "best", verbose=False)[0]
        results[name] = {"final weights": last, "best on validation": best}
        finish_wandb(run.trainer)  # one W&B run per method
    counts = run.datamodule.summary()
    checked = claims(results)
    table = results_table(results, counts) + "\n" + claims_text(checked)
    print("\n" + table)
    if a.results:
        command = " ".join(["python -m retinalab.demo", *(argv if argv is not None else sys.argv[1:])])
        write_text_atomic(a.results, provenance(command, time.perf_counter() - start) + "\n" + table)
        print(f"(written to {a.results})")
    failed = [claim for claim, holds in checked if not holds]
    if a.check and failed:
        raise DemoClaimError(f"what the docs say the demo shows does not hold here: {'; '.join(failed)}")
    return results


class DemoClaimError(RuntimeError):
    """``--check``: a claim the README makes about the demo's table does not hold on this run."""


def claims(results: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, bool]]:
    """What the README and docs/getting_started.md say the table shows, in words meant to hold on any
    machine, each checked on this run's test image AUROC (for both weights) and its 95% interval."""
    key = "test/image_auroc"
    out = []
    for weights in ("final weights", "best on validation"):
        conv, gan, fix = (results[name][weights] for name, _ in METHODS)
        out += [
            (f"{weights}: the ConvNet first, FixMatch second, the SSL-GAN last", conv[key] >= fix[key] > gan[key]),
            (f"{weights}: FixMatch's interval overlaps the ConvNet's", fix[f"{key}_high"] >= conv[f"{key}_low"]),
            (
                f"{weights}: the SSL-GAN's interval reaches neither of the other two",
                gan[f"{key}_high"] < min(conv[f"{key}_low"], fix[f"{key}_low"]),
            ),
        ]
    return out


def claims_text(checked: list[tuple[str, bool]]) -> str:
    """The claims as Markdown bullets, each marked holds / does NOT hold."""
    lines = ["What the docs say this table shows (test image AUROC), checked on these figures:", ""]
    lines += [f"- {claim}: {'holds' if holds else 'does NOT hold'}" for claim, holds in checked]
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, dict[str, dict[str, float]]], counts: dict) -> str:
    """The demo's closing table (Markdown), with the sentence that says what it measures."""
    lines = [
        f"Test metrics on {counts['test']['images']} photographs ({counts['test']['images_diseased']} with lesions), "
        f"same split, {counts['labeled']['images']} labelled images; image score = sum of patch sigmoids; "
        "[95% bootstrap interval over test photographs]:",
        "",
        f"| method | weights | {' | '.join(METRICS)} |",
        f"|---|---|{'---|' * len(METRICS)}",
    ]
    for name, by_weights in results.items():
        for weights, r in by_weights.items():
            cells = [_cell(r, k) if k.endswith("auroc") else f"{r.get(k, float('nan')):.3f}" for k in METRICS]
            lines.append(f"| {name} | {weights} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def provenance(command: str, seconds: float) -> str:
    """Where a results file's figures come from: the command, the date, and what makes another machine's
    figures differ (its CPU, its threads, the library versions)."""
    import numpy as np
    import torch

    return (
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} after {seconds / 60:.1f} min: {cpu_name()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}. The same command on the same machine writes the same figures; "
        "another CPU, thread count or library version sums in another order and moves them.\n"
    )


def run(argv: list[str] | None = None) -> int:
    """:func:`main` as a command: a problem the user can fix is one line (``error: ...``) and exit code 2."""
    from .utils.errors import debug_requested, format_error, user_error

    try:
        main(argv)
    except DemoClaimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        found = user_error(e)
        if found is None or debug_requested(list(argv if argv is not None else sys.argv[1:])):
            raise
        print(format_error(found), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
