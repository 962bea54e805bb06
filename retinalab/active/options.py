"""The options of an active-learning run (``retinalab active``), checked once when they are made.

:class:`RunOptions` is the command's one definition of its flags: the parser reads its fields and their
documentation (``retinalab active --help``), a run's ``config.yaml`` and ``state.json`` hold them, and the
parts of the loop (:mod:`retinalab.active.loop`) read what they need from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from lightning_fabric.loggers import Logger

from ..datasets import check_reader_args
from ..datasets.base import OnError
from ..utils.errors import ConfigError
from .egl import Scope
from .heuristics import get_heuristic
from .pool import ExudatePatchConfig

#: option values that are one of a few words (the parser offers these; :meth:`RunOptions.__post_init__`
#: refuses anything else with their list when the options are made in Python)
InitialDraw = Literal["stratified", "random"]
PatchKind = Literal["centred", "grid"]
ClassWeight = Literal["none", "balanced"]
CHOICES = {"initial_draw": InitialDraw, "pool_kind": PatchKind, "eval_kind": PatchKind, "class_weight": ClassWeight}


@dataclass
class RunOptions:
    """The options of ``retinalab active`` (one flag each; a run's ``config.yaml`` holds them): EGL (or random)
    active learning of a LeNet exudate patch classifier, run by :class:`~retinalab.active.ActiveLearning`.

    Checked when made (:meth:`__post_init__`): a bad value ends in one line naming the option.

    Args:
        dataset: reader name (``eophtha``, ``idrid``; the synthetic generator writes both layouts).
        root: dataset folder.
        reader_args: extra reader arguments (e-ophtha: ``parts: [EX]``; IDRiD: ``subsets: [segmentation]``).
        patches: how patches are cut (paper 002: 48x48).
        out_dir: run folder (state, checkpoints, CSVs, plots). Runs of the same study should be
            siblings: ``figure2.png`` in the parent compares all of them.
        acquisition: ``egl`` (Eq. 1 of paper 002), the strategies papers compare it with, ``entropy``
            (predictive entropy), ``margin`` (one minus the gap between the two class probabilities) and
            ``bald`` (mutual information under Monte-Carlo dropout, ``mc_samples`` passes), or ``random``
            (the baseline): a heuristic registered in :mod:`retinalab.active.heuristics`, or ``module:name``
            of a module registering one. Every scored one runs through Algorithms 1 and 2 exactly as EGL.
        select: ``patches`` (Algorithm 1) or ``images`` (Algorithm 2).
        k: patches chosen by Algorithm 1 per round (with ``select: images``: among the chosen images'
            patches, or from the whole pool after them; see ``image_patches``).
        images_per_round: images chosen by Algorithm 2 per round.
        image_patches: how Algorithm 2's line 10 ("update M with k selected patches using Algorithm 1
            and the patches in L_mu") is read. ``selected_images`` (default; what an annotator can do):
            the ``k`` patches of highest EGL (random: ``k`` drawn uniformly) among the unlabelled patches
            of the image(s) chosen this round, so every label comes from an image the annotator opened.
            ``pool``: every unlabelled patch of the chosen image(s), then ``k`` patches by Algorithm 1
            from the whole remaining pool.
        match_labels: random arm only: the folder of another run (the EGL arm, run first with the same
            data, split, seed and initial set) whose label and image counts this run copies round by
            round, so that both arms are compared at equal labels. Algorithm 1: the same number of
            random patches; Algorithm 2: the same number of random images, and random patches up to
            the same label count (``pool``: their patches, then random pool patches; ``selected_images``:
            among their patches, opening one more random image where they hold too few).
        initial_from: the folder of another run (run first) of the same data, split, seed, initial set
            and network, any acquisition (a BALD arm's dropout LeNet is another network than EGL's), whose
            initial model this run takes instead of training its own: the arms of a study then start
            from the very same round 0, trained once (its ``model-round000.pt``, which every run keeps).
        initial_batches: the initial model's labelled patches, in batches (Algorithm 1; paper: 5).
        initial_draw: how Algorithm 1's initial patches are drawn: ``stratified`` (default; half among
            the exudate patches and half among the healthy ones, uniformly within each, where the pool's
            labels are known: a uniform draw from a grid pool where exudates are rare may hold none, and
            the initial model then predicts one class) or ``random`` (uniform over the pool).
        initial_images: mu, the initial images (Algorithm 2; paper Figure 2: 4). Drawn half from images
            with exudates, half without, so that the initial model has seen both classes.
        pool_kind: which patches the oracle labels: ``centred`` (sampled from the ground-truth masks:
            the paper's setting, simulated oracle only) or ``grid`` (the image grid; no mask needed;
            exudate patches are as rare as exudates are in the photographs).
        eval_kind: the validation and test patches: ``centred`` (the paper's, balanced per class) or
            ``grid`` (every grid patch of the validation / test images: the F-measure of a detector
            run over whole photographs, exudates a minority).
        scope: EGL parameter scope (``fc``: down to the first fully connected layer, as in the paper).
        max_rounds: budget in rounds after the initial one.
        max_labels: budget in labelled patches (``None``: no limit).
        patience: stop when ``monitor`` has not improved by ``min_delta`` for this many rounds (0 disables).
        min_delta: the smallest change of ``monitor`` that counts as an improvement.
        monitor: the validation metric ``patience`` watches.
        lr: SGD learning rate (paper: 0.01).
        momentum: SGD momentum (0.9, Caffe's LeNet solver default, which the paper used).
        weight_decay: SGD weight decay (5e-4, Caffe's LeNet solver default).
        batch_size: SGD batch size (paper: 32).
        epochs_per_round: passes over the labelled set per update after round 0.
        class_weight: ``none`` (the paper's plain cross-entropy) or ``balanced`` (each class weighted by
            the inverse of its share of the labelled set: for grid pools, where a model trained on a few
            percent exudate patches otherwise calls every patch healthy).
        augment: train on the 8 dihedral variants of every labelled patch.
        initial_epochs: passes over the labelled set for the initial model.
        initial_augment: the initial model too (default no: paper 002's M is "initially trained with 5
            batches of 32 samples", i.e. ``initial_batches`` SGD steps with ``initial_epochs: 1``).
        conv_channels: LeNet's convolution widths (Caffe: 20 and 50).
        hidden: LeNet's fully connected width (Caffe: 500).
        dropout: LeNet's dropout rate before each fully connected layer, in training and in BALD's
            passes (evaluation and the other scores run without it). Default (``None``): 0.5 for a
            heuristic that needs it (``bald``), and 0 (Caffe's LeNet, the paper's) for the others.
        mc_samples: BALD's stochastic forward passes T per patch (scoring costs about T inference passes).
        val_size: patients' share for validation (by patient, stratified).
        test_size: patients' share for test (by patient, stratified).
        seed: split, initial set, random selections and training order.
        oracle: ``simulated`` (ground-truth masks) or ``human`` (queries to ``out_dir/queries``).
        track_images: images whose interestingness (sum of EGL) is recorded every round (Figure 3).
        score_batch_size: patches per EGL batch (memory is bounded by one batch); default 256 on a
            CPU and 4096 on a GPU, where smaller batches leave scoring bound by kernel launches.
        cache_dir: patch cache location (``None``: ``$RETINALAB_CACHE`` or ``~/.cache/retinalab``).
        num_workers: patch cache build workers.
        on_error: bad-file policy of the reader (``raise`` or ``skip``).
        accelerator: Lightning Fabric's accelerator.
        devices: Lightning Fabric's devices; with several, each rank scores a shard of the pool and trains
            on a shard of every batch (DDP).
        strategy: Lightning Fabric's strategy.
        num_nodes: Lightning Fabric's nodes.
        logger: ``"wandb"`` (the shipped configs) = :class:`retinalab.lightning.loggers.WandbLogger` under
            ``out_dir/logs/version_<k>``, online with a W&B key and offline otherwise, named
            ``active/<dataset>-<acquisition>-<select>-s<seed>``, grouped by dataset, tagged with the
            acquisition, selection, dataset and seed; or any Lightning logger; ``None``: none.
        progress: show progress bars.
        keep_checkpoints: keep every round's ``model-roundNNN.pt`` (default: the latest and round 0's).
        plot_every: draw the plots (``curves.png``, ``interestingness.png``, ``../figure2.png``, the
            round's heatmap) every this many rounds and when the run stops; 0: only when it stops;
            ``None``: never (a benchmark that draws its own figures across runs).
            State and tables are written every round whatever this says. Plots take most of a round's
            time on small pools (about 1.2 s of 1.9 s on two CPU cores in ``benchmarks/active_learning.py``).
    """

    dataset: str = "eophtha"
    root: str = "data/e-ophtha"
    reader_args: dict[str, Any] | None = None
    patches: ExudatePatchConfig = field(default_factory=ExudatePatchConfig)
    out_dir: str = "runs/active/egl"
    acquisition: str = "egl"
    select: Literal["patches", "images"] = "images"
    k: int = 32
    images_per_round: int = 1
    image_patches: Literal["selected_images", "pool"] = "selected_images"
    match_labels: str | None = None
    initial_from: str | None = None
    initial_batches: int = 5
    initial_draw: InitialDraw = "stratified"
    initial_images: int = 4
    pool_kind: PatchKind = "centred"
    eval_kind: PatchKind = "centred"
    scope: Scope = "fc"
    max_rounds: int = 30
    max_labels: int | None = None
    patience: int = 0
    min_delta: float = 1e-3
    monitor: Literal["val/loss", "val/acc"] = "val/loss"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    epochs_per_round: int = 1
    class_weight: ClassWeight = "none"
    initial_epochs: int = 1
    augment: bool = True
    initial_augment: bool = False
    conv_channels: tuple[int, int] = (20, 50)
    hidden: int = 500
    dropout: float | None = None
    mc_samples: int = 20
    val_size: float = 0.2
    test_size: float = 0.2
    seed: int = 0
    oracle: Literal["simulated", "human"] = "simulated"
    track_images: int = 4
    score_batch_size: int | None = None
    cache_dir: str | None = None
    num_workers: int = 0
    on_error: OnError = "raise"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    logger: Logger | Literal["wandb"] | None = None
    progress: bool = True
    keep_checkpoints: bool = False
    plot_every: int | None = 1

    def __post_init__(self) -> None:
        """Refuse inconsistent options with a message naming the option; resolve ``dropout`` (``None``:
        the heuristic's default where it needs dropout, else 0)."""
        if self.oracle == "human" and self.pool_kind == "centred":
            raise ConfigError(
                "pool_kind: centred samples patches from the ground-truth masks, which a human-oracle run does not "
                "use; set pool_kind: grid"
            )
        for name in ("k", "images_per_round", "initial_batches", "initial_images", "max_rounds", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.plot_every is not None and self.plot_every < 0:
            raise ConfigError(f"plot_every must be >= 0, got {self.plot_every}")
        if self.score_batch_size is not None and self.score_batch_size < 1:
            raise ConfigError(f"score_batch_size must be a positive number of patches, got {self.score_batch_size}")
        if self.select == "images" and self.images_per_round == 0 and self.k == 0:
            raise ConfigError("select: images with images_per_round 0 and k 0 would never label anything")
        if self.select == "images" and self.image_patches == "selected_images" and self.k == 0:
            raise ConfigError(
                "image_patches: selected_images labels k patches of the chosen images each round; set k >= 1 (or "
                "image_patches: pool)"
            )
        heuristic = get_heuristic(self.acquisition)  # an unknown one: one line listing the registered ones
        for name, kind in CHOICES.items():
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be {' or '.join(allowed)}, not {getattr(self, name)!r}")
        if self.dropout is None:
            self.dropout = heuristic.default_dropout if heuristic.needs_dropout else 0.0
        self.dropout = float(self.dropout)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if heuristic.needs_dropout and self.dropout == 0:
            raise ConfigError(
                f"acquisition: {self.acquisition} needs dropout (Monte-Carlo passes); set dropout > 0 (e.g. "
                f"{heuristic.default_dropout}) or leave it unset"
            )
        if self.mc_samples < 1:
            raise ConfigError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if self.match_labels is not None and heuristic.scored:
            raise ConfigError(
                "match_labels copies another run's label counts into a random arm; it needs acquisition: random, "
                f"not {self.acquisition}"
            )
        check_reader_args(self.dataset, {"on_error": self.on_error, **(self.reader_args or {})}, "reader_args")

    def config(self) -> dict:
        """The options as ``state.json`` and the manifest keep them (JSON types; the logger left out)."""
        config = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "logger"}
        config["patches"] = asdict(self.patches)
        config["conv_channels"] = list(self.conv_channels)
        return config
