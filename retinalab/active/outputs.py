"""What an active-learning run shows people while it runs: metrics and plots in the logger (W&B), the
run folder's tables and plots, and the EGL heatmap of the image to annotate next."""

from __future__ import annotations

import math

import numpy as np

from .heuristics import get_heuristic
from .state import LoopState, write_tables


class RunOutputs:
    """The outputs of :class:`~retinalab.active.ActiveLearning` (a mixin: it reads the loop's attributes)."""

    def make_wandb_logger(self):
        """The W&B logger of ``logger: wandb`` (online with credentials, offline otherwise; no run is
        started until the first metric): under ``out_dir/logs/version_<k>``, named
        ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged."""
        from ..lightning.loggers import WandbLogger

        return WandbLogger(
            save_dir=self.out,
            project="retinalab",
            name=f"active/{self.dataset}-{self.acquisition}-{self.select}-s{self.seed}",
            group=f"active/{self.dataset}",
            tags=["active", self.acquisition, self.select, self.dataset, f"seed_{self.seed}"],
        )

    def _log(self, state: LoopState, metrics: dict) -> None:
        clean = {
            k_: float(v)
            for k_, v in metrics.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
        }
        self.fabric.log_dict({f"active/{k_}": v for k_, v in clean.items()}, step=state.round)
        if (
            self.rank0
            and self.logger is not None
            and hasattr(self.logger, "log_image")
            and getattr(self, "_plotted", None) == state.round
        ):
            # one key per plot: W&B shows the images of one key side by side and wants them the same size
            plots = {
                "curves": self.out / "curves.png",
                "interestingness": self.out / "interestingness.png",
                "heatmap": self.out / "heatmaps" / f"round_{state.round:03d}.png",
            }
            for name, png in plots.items():
                if png.is_file():
                    self.logger.log_image(f"active/{name}", images=[str(png)], step=state.round, caption=[png.stem])

    def _heatmap_data(self, state: LoopState) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The acquisition's scores over the grid of the image to annotate next: the unlabelled training
        image with the highest interestingness this round (Algorithm 2), else the first tracked
        unlabelled one. None for random selection."""
        if not get_heuristic(self.acquisition).scored or state.round < 0:
            return None
        done = set(state.labelled_images)
        unlabelled = [i for i in self.split["train"] if i not in done]
        free = set(unlabelled)
        ranked = [i for i in sorted(self._round_sigma, key=lambda i: -self._round_sigma[i]) if i in free]
        ranked += [i for i in self.tracked if i in free] + unlabelled + list(self.split["train"])
        img = int(ranked[0])
        items = self.grid_of_image[img]
        if not len(items):
            return None
        phi, _ = self.score(items)
        return img, items, phi.numpy()

    def _write_outputs(
        self, state: LoopState, heat: tuple[int, np.ndarray, np.ndarray] | None = None, plots: bool = True
    ) -> None:
        from .plots import write_run_plots

        write_tables(
            self.out, state, {k_: [self.pool.images[i]["image_id"] for i in v] for k_, v in self.split.items()}
        )
        if plots:
            write_run_plots(self.out, state, self.pool, heat, self.acquisition)
            self._plotted = state.round
