"""What a finished FixMatch fit must show (shared by the FixMatch tests and the learning tests)."""

from __future__ import annotations

import torch


def check_fixmatch_run(run) -> None:
    """What a finished FixMatch fit must show (called by tests/learning/test_learning.py's FixMatch test, which
    fits it through the CLI): its diagnostics logged, p_labelled the labelled patches' class shares,
    p_model updated every step, and evaluation through the weight average, which differs from the
    trained weights."""
    task = run.model
    metrics = run.trainer.callback_metrics
    assert {
        "fixmatch/mask_rate",
        "fixmatch/pseudo_lesion_share",
        "fixmatch/loss_unsup",
        "fixmatch/p_model_lesion",
    } <= set(metrics)
    assert 0.0 < float(metrics["fixmatch/mask_rate"]) <= 1.0  # some unlabelled patches were pseudo-labelled
    # the pseudo-labels against the synthetic set's hidden patch labels: a model that learned (AUROC 1 on
    # easy) pseudo-labels mostly right, and lesions are a minority of the unlabelled patches
    print({k: round(float(v), 3) for k, v in metrics.items() if k.startswith("fixmatch/")})
    assert float(metrics["fixmatch/pseudo_accuracy"]) > 0.8
    assert 0.0 < float(metrics["fixmatch/true_lesion_share"]) < 0.5
    assert int(task.p_model_updates) == run.trainer.global_step == int(task.ema.n_averaged)
    counts = run.datamodule.class_counts()
    assert torch.allclose(task.p_labelled, torch.tensor(counts / counts.sum(), dtype=torch.float32))
    x = next(iter(run.datamodule.val_dataloader()))["image"][:16]
    task.eval()
    with torch.no_grad():
        assert torch.equal(task.eval_logits(x), task.ema.module(x * 2 - 1))
        assert not torch.allclose(task.ema.module(x * 2 - 1), task(x))
