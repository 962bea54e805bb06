"""What an active-learning run shows people while it runs: metrics and plots in the logger (W&B), the
run folder's tables and plots, and the heatmap of the image to annotate next."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .state import LoopState
from .store import RunStore

if TYPE_CHECKING:
    from lightning_fabric import Fabric

    from .options import RunOptions
    from .pool import ExudatePatches


def make_wandb_logger(o: RunOptions):
    """The W&B logger of ``logger: wandb`` (online with credentials, offline otherwise; no run is started
    until the first metric): under ``out_dir/logs/version_<k>``, named
    ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged."""
    from ..lightning.loggers import WandbLogger

    return WandbLogger(
        save_dir=Path(o.out_dir),
        project="retinalab",
        name=f"active/{o.dataset}-{o.acquisition}-{o.select}-s{o.seed}",
        group=f"active/{o.dataset}",
        tags=["active", o.acquisition, o.select, o.dataset, f"seed_{o.seed}"],
    )


class RunReport:
    """The outputs of one run: its tables and plots in the run folder, its metrics and plots in ``logger``.

    Args:
        options: the run's options (the acquisition names the plots' colours and scores).
        store: the run folder.
        fabric: logs the metrics (every rank calls; Fabric's loggers write on rank 0).
        logger: the run's logger (images go to one that can show them), or None.
        pool: the patch pool.
        split: image indices per split.
    """

    def __init__(
        self,
        options: RunOptions,
        store: RunStore,
        fabric: Fabric,
        logger,
        pool: ExudatePatches,
        split: dict[str, list[int]],
    ) -> None:
        self.options, self.store, self.fabric, self.logger, self.pool, self.split = (
            options,
            store,
            fabric,
            logger,
            pool,
            split,
        )
        self.plotted: int | None = None  # the round whose plots were drawn last

    def log(self, state: LoopState, metrics: dict) -> None:
        """The round's metrics (and, on rank 0, the plots drawn this round) to the logger."""
        clean = {
            k_: float(v)
            for k_, v in metrics.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
        }
        self.fabric.log_dict({f"active/{k_}": v for k_, v in clean.items()}, step=state.round)
        if (
            self.fabric.global_rank == 0
            and self.logger is not None
            and hasattr(self.logger, "log_image")
            and self.plotted == state.round
        ):
            # one key per plot: W&B shows the images of one key side by side and wants them the same size
            out = self.store.out
            plots = {
                "curves": out / "curves.png",
                "interestingness": out / "interestingness.png",
                "heatmap": out / "heatmaps" / f"round_{state.round:03d}.png",
            }
            for name, png in plots.items():
                if png.is_file():
                    self.logger.log_image(f"active/{name}", images=[str(png)], step=state.round, caption=[png.stem])

    def write(
        self, state: LoopState, heat: tuple[int, np.ndarray, np.ndarray] | None = None, plots: bool = True
    ) -> None:
        """The tables (every round) and, with ``plots``, the plots with the heatmap ``heat`` (image,
        its grid items, their scores) of the image to annotate next."""
        from .plots import write_run_plots

        self.store.write_tables(
            state, {k_: [self.pool.images[i]["image_id"] for i in v] for k_, v in self.split.items()}
        )
        if plots:
            write_run_plots(self.store.out, state, self.pool, heat, self.options.acquisition)
            self.plotted = state.round
