"""The ``retinalab fit`` arguments of the tests' tiny paper-000 runs, in one place: the kill, SIGTERM,
exact-resume and run-folder tests train the same small networks on the same small synthetic set."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.paths import REPO


def tiny_patch_fit(config: str, data: Path, out: Path, *extra: str) -> list[str]:
    """``retinalab fit`` of a patch config (paper 000's ConvNet or SSL-GAN, ``config`` relative to the
    repository) on a synthetic IDRiD-layout set of 24 photographs at 128 px: a 4x4 grid of 32 px
    patches, 4 validation and 4 test photographs, 6 labelled ones, batch 32, width 0.1, no progress bar
    or model summary, files under ``out``. ``extra`` comes last, so it overrides any of these."""
    return [
        "fit",
        "--config",
        str(REPO / config),
        f"--data.root={data}",
        "--data.image_size=128",
        "--data.patch_size=32",
        "--data.stride=32",
        "--data.val_size=4",
        "--data.test_size=4",
        "--data.cache_workers=0",
        "--data.num_labeled_images=6",
        "--data.batch_size=32",
        "--model.width=0.1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        *extra,
    ]
