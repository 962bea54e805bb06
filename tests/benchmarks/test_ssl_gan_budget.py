"""The report of benchmarks/ssl_gan_budget.py (issue 50), read from result lines and test predictions made
up here so that the right answer is known: the paired gaps at each budget, the trajectory table and the
figure. The fits are the benchmark's business (`python benchmarks/ssl_gan_budget.py`)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tests.helpers.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

#: made-up test image AUROC per arm at budgets of 3 and 12 epochs: the GAN term costs more with the steps
QUALITY = {"SSL-GAN": (0.80, 0.70), "GAN term off": (0.80, 0.90), "ConvNet": (0.78, 0.92)}


def made_up_runs(work, seeds=(0, 1)) -> dict:
    import ssl_gan_budget as b

    from retinalab.metrics.bootstrap import exact_auroc

    done = {}
    (work / "predictions").mkdir()
    for s in seeds:
        targets = np.zeros((80, 4), np.int64)
        targets[:40, 0] = 1
        noise = np.random.default_rng(100 + s).random((80, 4))  # shared by a seed's arms: paired
        for arm, quality in QUALITY.items():
            preds, budgets = {}, {}
            for epoch, q in zip((3, 12), quality, strict=True):
                signal = np.r_[np.ones(40), np.zeros(40)][:, None] * (q - 0.5) * 2.5
                probs = 1 / (1 + np.exp(-(signal + (noise - 0.5) * 2)))
                preds[f"e{epoch}_probs"], preds[f"e{epoch}_targets"] = probs, targets
                budgets[str(epoch)] = {"image_auroc": exact_auroc(probs.sum(1), targets.max(1)), "patch_auroc": 0.5}
            name = b.tag(arm, s)
            np.savez(work / "predictions" / f"{name}.npz", **preds)
            trajectory = [
                {
                    "epoch": e,
                    "steps": e * 92,
                    "s_per_step": 0.3,
                    "val/image_auroc": 0.6 + 0.02 * e,
                    "gan/d_accuracy": 0.9,
                }
                for e in (4, 8, 12)
            ]
            done[name] = {
                "arm": arm,
                "seed": s,
                "tag": name,
                "budgets": budgets,
                "predictions": f"predictions/{name}.npz",
                "trajectory": trajectory,
                "steps_per_epoch": 92,
            }
    return done


def test_the_report_gives_the_paired_gaps_at_each_budget_and_draws_the_trajectory(tmp_path):
    import ssl_gan_budget as b

    done = made_up_runs(tmp_path)
    a = argparse.Namespace(seeds=[0, 1], budgets=[3, 12], epochs=12)
    text = b.report(done, a, tmp_path)
    assert "Runs finished: 6 of 6" in text and "| arm | 276 steps | 1104 steps |" in text
    row = next(line for line in text.splitlines() if line.startswith("| SSL-GAN - GAN term off |"))
    at_3, at_12 = (float(cell.split()[0]) for cell in row.strip("|").split("|")[1:3])
    expected = [
        np.mean(
            [
                done[b.tag("SSL-GAN", s)]["budgets"][e]["image_auroc"]
                - done[b.tag("GAN term off", s)]["budgets"][e]["image_auroc"]
                for s in (0, 1)
            ]
        )
        for e in ("3", "12")
    ]
    assert (at_3, at_12) == (round(expected[0], 3), round(expected[1], 3)) and at_12 < at_3 - 0.05
    assert "| 368 | 0.680 | 0.900 |" in text  # the SSL-GAN's trajectory at its first validation
    assert (tmp_path / "trajectory.png").stat().st_size > 10_000
    # a missing run: the report says how many finished and leaves its cells empty
    del done[b.tag("ConvNet", 1)]
    assert "Runs finished: 5 of 6" in b.report(done, a, tmp_path)


def test_each_remedy_is_compared_with_the_ssl_gan_as_shipped():
    import ssl_gan_budget as b

    assert b.pairs(["SSL-GAN", "ConvNet", "2 G steps", "instance noise 0.1"]) == [
        ("SSL-GAN", "ConvNet"),
        ("2 G steps", "SSL-GAN"),
        ("instance noise 0.1", "SSL-GAN"),
    ]
    assert {b.tag(arm, 0) for arm in b.ARMS} == {f"{t}-0" for t in b.TAGS.values()} and len(b.TAGS) == len(b.ARMS)
