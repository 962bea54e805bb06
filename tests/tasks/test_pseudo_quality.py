"""Issue 31: pseudo-mask quality against the lesion masks the synthetic generator drew for the graded
photographs, and the ``oracle`` arm that trains G on those masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retinalab.cli import main
from retinalab.datamodules import SegmentationDataModule
from retinalab.metrics.lesions import score_bins
from retinalab.synthetic import TRUTH_DIR, truth_masks, write_synthetic
from retinalab.tasks import CollaborativeTask
from retinalab.tasks.pseudo_quality import pseudo_mask_quality, pseudo_targets, quality_maps
from tests.helpers.paths import REPO

TINY = dict(generator_width=0.0625, discriminator_width=0.0625, backbone="resnet18", num_overlays=1)


@pytest.fixture(scope="module")
def syn_idrid(tmp_path_factory) -> Path:
    return write_synthetic("idrid", tmp_path_factory.mktemp("syn") / "IDRiD", num_images=24, seed=3, size=(96, 64))


def _dm(
    root: Path, tmp_path: Path, truth: str = "eval", augment: bool = False, graded_val: int = 3
) -> SegmentationDataModule:
    dm = SegmentationDataModule(
        "idrid",
        str(root),
        image_size=32,
        val_size=1,
        batch_size=2,
        num_workers=0,
        image_level_dataset="idrid",
        image_level_root=str(root),
        image_level_val_size=graded_val,
        augment=augment,
        split_file=str(tmp_path / "split.json"),
        image_level_truth=truth,
    )
    dm.setup("fit")
    return dm


def test_the_drawn_masks_reach_only_the_image_level_batches_asked_for(syn_idrid, tmp_path, idrid_root):
    dm = _dm(syn_idrid, tmp_path)
    pixel_val, image_val = dm.val_dataloader()
    assert all(
        "truth_fraction" not in b and "truth" not in b for b in pixel_val
    )  # published masks stay the only masks there
    train = next(iter(dm.train_dataloader()))[0]  # CombinedLoader: (batch, batch_idx, dataloader_idx)
    assert "truth" not in train["image"] and "truth" not in train["pixel"]  # eval: training never sees them
    for batch in image_val:
        for i, image_id in enumerate(batch["image_id"]):
            record = next(r for r in dm.parts["image_level_val"] if r.image_id == image_id)
            drawn = truth_masks(syn_idrid, record.image_path)
            for j, lesion in enumerate(dm.lesions):
                # each lesion's share of each input pixel: > 0 exactly where a mask file was drawn for it
                assert bool(batch["truth_fraction"][i, j].sum() > 0) == (lesion in drawn), (image_id, lesion)
                assert set(torch.unique(batch["truth"][i, j]).tolist()) <= {0.0, 1.0}
    # all: the training batches of the graded photographs carry them too, transformed with the photograph
    batch = next(iter(_dm(syn_idrid, tmp_path, "all", augment=True).train_dataloader()))[0]["image"]
    assert batch["truth"].shape == (2, 4, 32, 32) and "truth_fraction" not in batch
    # off: nowhere
    assert all("truth_fraction" not in b for b in _dm(syn_idrid, tmp_path, "off").val_dataloader()[1])
    # a dataset without drawn masks (a real layout): eval quietly has none, all stops with what to do
    assert all("truth_fraction" not in b for b in _dm(idrid_root, tmp_path, graded_val=1).val_dataloader()[1])
    with pytest.raises(
        ValueError,
        match=rf"image_level_truth: all .* needs the lesion masks retinalab synth keeps under .*{TRUTH_DIR}.* draw it "
        r"again",
    ):
        _dm(idrid_root, tmp_path, "all", graded_val=1)
    with pytest.raises(ValueError, match="image_level_truth must be"):
        SegmentationDataModule(image_level_truth="train")


def _average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP by hand with soft targets: a pixel counts ``t`` as a positive and ``1 - t`` as a negative;
    AP = sum over distinct thresholds, highest first, of (recall gained) x (precision there)."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    ap, tp, fp, prev_recall = 0.0, 0.0, 0.0, 0.0
    total = t.sum()
    for value in np.unique(s)[::-1]:
        at = s == value
        tp, fp = tp + t[at].sum(), fp + (1 - t[at]).sum()
        recall = tp / total
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return float(ap)


def test_quality_of_g_attention_and_pseudo_masks_against_a_hand_computation():
    torch.manual_seed(0)
    task = CollaborativeTask(stage="joint", pseudo_threshold=0.5, **TINY)
    g = torch.Generator().manual_seed(1)
    truth = torch.zeros(2, 4, 32, 32)
    truth[0, 0, 4:9, 6:12] = 1.0
    truth[1, 0, 20:24, 3:5] = 0.5  # soft: half of these pixels is lesion
    truth[:, 1:, 10:20, 10:20] = (torch.rand(2, 3, 10, 10, generator=g) > 0.5).float()
    batches = [
        {
            "image": torch.rand(2, 3, 32, 32, generator=g),
            "truth_fraction": truth,
            "image_id": ["a", "b"],
            "label": torch.tensor([0, 2]),
        }
    ]
    got = pseudo_mask_quality(task, batches + [None])
    task.eval()
    with torch.no_grad():
        maps = quality_maps(task, batches[0])
    assert set(maps) == {"G", "attention", "pseudo"} and maps["attention"].shape[-2:] == (
        8,
        8,
    )  # f_low: a quarter of the input
    assert set(torch.unique(maps["pseudo"]).tolist()) <= {0.0, 1.0}  # thresholded as the loss uses them
    for source, m in maps.items():
        t = F.avg_pool2d(truth, 4) if source == "attention" else truth  # the truth's share of each attention cell
        for j, lesion in enumerate(task.lesions):
            # ranked as the metric ranks them: scores equal to float16 precision share a bin (score_bins)
            expected = _average_precision(score_bins(m[:, j].flatten()).numpy(), t[:, j].flatten().double().numpy())
            assert got[f"{source}/{lesion}/auc_pr"] == pytest.approx(expected, abs=1e-5), (source, lesion)
    assert got["G/mean/auc_pr"] == pytest.approx(np.mean([got[f"G/{les}/auc_pr"] for les in task.lesions]), abs=1e-6)
    # Lesion(Pretrained) has neither attention maps nor pseudo masks: G alone
    frozen = CollaborativeTask(stage="joint", semi=False, adversarial=False, lesion_features="masks", **TINY)
    assert {k.split("/")[0] for k in pseudo_mask_quality(frozen, batches)} == {"G"}
    with pytest.raises(ValueError, match="no batch carries the drawn lesion masks"):
        pseudo_mask_quality(task, [{k: v for k, v in batches[0].items() if k != "truth_fraction"}])


def test_the_oracle_arm_takes_the_drawn_masks_as_pseudo_masks():
    task = CollaborativeTask(stage="joint", semi=True, adversarial=False, pseudo_source="truth", **TINY)
    truth = (torch.rand(2, 4, 32, 32) > 0.9).float()
    assert torch.equal(pseudo_targets(task, None, {"truth": truth}, (32, 32)), truth)
    assert torch.equal(pseudo_targets(task, None, {"truth": truth}, (16, 16)), F.avg_pool2d(truth, 2))
    with pytest.raises(ValueError, match="needs the drawn masks.* data.image_level_truth: all"):
        pseudo_targets(task, None, {}, (32, 32))
    with pytest.raises(ValueError, match="needs semi: true"):
        CollaborativeTask(stage="joint", semi=False, pseudo_source="truth", **TINY)
    with pytest.raises(ValueError, match="pseudo_source must be"):
        CollaborativeTask(stage="joint", pseudo_source="masks", **TINY)


def test_oracle_overlay_runs_two_steps_and_logs_the_quality_and_its_picture(syn_idrid, tmp_path):
    """retinalab fit with the stage-2 config and the oracle overlay on a synthetic IDRiD: G's pseudo
    targets are the drawn masks (AUC-PR 1 against them), G's own masks and the attention maps are
    scored beside them at validation, and W&B gets the side-by-side picture."""
    from PIL import Image

    from retinalab.lightning.loggers import read_run_metrics

    conf = REPO / "conf" / "collaborative"
    out = tmp_path / "oracle"
    assert (
        main(
            [
                "fit",
                "--config",
                str(conf / "idrid_stage2.yaml"),
                "--config",
                str(conf / "overlays" / "oracle.yaml"),
                f"--data.root={syn_idrid}",
                f"--data.image_level_root={syn_idrid}",
                "--data.val_size=1",
                "--data.image_level_val_size=3",
                "--data.image_size=32",
                "--data.num_workers=0",
                "--data.batch_size=2",
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                "--trainer.log_every_n_steps=1",
                f"--trainer.default_root_dir={out}",
                f"--trainer.logger.init_args.save_dir={out}",
                "--model.generator_width=0.0625",
                "--model.discriminator_width=0.0625",
                "--model.num_overlays=2",
            ]
        )
        == 0
    )
    run = next(out.glob("logs/version_*"))
    metrics = read_run_metrics(run)
    assert metrics["train/loss_ce_pseudo"].notna().sum() == 2  # both batches: no warm-up for the true masks
    last = metrics.ffill().iloc[-1]
    # the drawn masks as 0/1 targets (a pixel any part of which is lesion, as G's masks on the pixel-annotated
    # photographs): they rank every lesion pixel first (AUROC ~1) but count a pixel 1/4 lesion wholly (AUC-PR < 1)
    assert last["val/vs_truth/pseudo/mean/auc_roc"] > 0.98
    assert last["val/vs_truth/pseudo/mean/auc_pr"] > 10 * max(
        last["val/vs_truth/G/mean/auc_pr"], last["val/vs_truth/attention/mean/auc_pr"]
    )
    sheets = sorted(run.glob("wandb/offline-run-*/files/media/images/val/pseudo_masks_*.png"))
    assert len(sheets) == 2 and Image.open(sheets[0]).size == (
        5 * 32,
        32,
    )  # photograph | truth | G | attention | pseudo


def test_mask_dependence_tells_a_grader_that_ignores_the_masks_from_one_that_uses_them():
    """Issue 31's finding: an attention grader whose Eq. 5 weights on the mask channel are (near) zero
    grades the same with and without G's masks; one that weighs the mask moves its attention maps."""
    from retinalab.tasks.pseudo_quality import mask_dependence

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    batches = [{"image": torch.rand(4, 3, 32, 32, generator=g)} for _ in range(2)] + [None]
    task = CollaborativeTask(stage="joint", generator_prior=0.5, **TINY)  # G's masks around 0.5: far from the zeros
    with torch.no_grad():
        for conv in task.grader.w_low:
            conv.weight[:, 0] = 0.0  # the mask channel of concat(m_l, f_low) does nothing
    blind = mask_dependence(task, batches)
    assert blind["grade_change"] == 0.0 and blind["alpha_change"] == 0.0 and blind["alpha_std"] > 0
    with torch.no_grad():
        for conv in task.grader.w_low:
            conv.weight[:, 0] = 20.0
    assert mask_dependence(task, batches)["alpha_change"] > 1e-3
    frozen = CollaborativeTask(
        stage="joint", semi=False, adversarial=False, lesion_features="masks", generator_prior=0.5, **TINY
    )
    seeing = mask_dependence(frozen, batches)
    assert 0.0 <= seeing["grade_change"] <= 1.0 and np.isnan(seeing["alpha_change"]) and np.isnan(seeing["alpha_std"])
    with pytest.raises(ValueError, match="no photograph"):
        mask_dependence(task, [None])
