"""What a study is: methods x labelled-image counts x seeds, read from a study config
(``conf/studies/*.yaml``; the keys are described in :mod:`retinalab.experiments.study`), and the
``retinalab fit`` arguments of each cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import ConfigError

#: a study's ``selection`` -> the patch datamodule's ``labeled_selection`` (``None``: at random)
SELECTIONS = {"random": None, "egl": "retinalab.active.EGLChooser"}


@dataclass
class Cell:
    method: str
    labelled: int | None
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}/n{'all' if self.labelled is None else self.labelled}_s{self.seed}"


@dataclass
class Study:
    name: str
    out_dir: Path
    methods: dict[str, Path]
    labelled: list[int | None]
    seeds: list[int]
    selection: str = "random"
    metrics: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    wandb: dict[str, Any] | None = None
    source: Path | None = None  # the study config file (child processes of --parallel read it again)

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """Read and check a study config; errors name the file and the key."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the study config ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a study config is a mapping with name, methods, labelled, seeds")
        missing = [k for k in ("name", "methods", "labelled", "seeds") if k not in raw]
        if missing:
            raise ConfigError(f"{path}: missing key(s) {missing}")
        known = {
            "name",
            "out_dir",
            "methods",
            "labelled",
            "seeds",
            "selection",
            "metrics",
            "overrides",
            "method_overrides",
            "wandb",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        if raw.get("selection", "random") not in SELECTIONS:
            raise ConfigError(f"{path}: selection {raw['selection']!r} is not one of {list(SELECTIONS)}")
        methods = {}
        for name, cfg in dict(raw["methods"]).items():
            p = Path(cfg)
            if not p.is_file():
                raise ConfigError(f"{path}: method {name!r}: config {cfg} does not exist")
            methods[str(name)] = p
        bad = [m for m in raw.get("method_overrides", {}) if m not in methods]
        if bad:
            raise ConfigError(f"{path}: method_overrides for unknown method(s) {bad}")
        labelled = [None if v in (None, "all") else int(v) for v in raw["labelled"]]
        return cls(
            name=str(raw["name"]),
            out_dir=Path(raw.get("out_dir", f"runs/studies/{raw['name']}")),
            methods=methods,
            labelled=labelled,
            seeds=[int(s) for s in raw["seeds"]],
            selection=raw.get("selection", "random"),
            metrics=list(raw.get("metrics", [])),
            overrides=[str(o) for o in raw.get("overrides", [])],
            method_overrides={k: [str(o) for o in v] for k, v in raw.get("method_overrides", {}).items()},
            wandb=dict(raw["wandb"]) if raw.get("wandb") else None,
            source=path,
        )

    def _chosen_logger(self, method: str) -> str | None:
        """The logger a ``--trainer.logger=`` override of the study picks for ``method`` (the last one), if any."""
        chosen = [
            o.split("=", 1)[1]
            for o in (*self.overrides, *self.method_overrides.get(method, []))
            if o.startswith("--trainer.logger=")
        ]
        return chosen[-1] if chosen else None

    def uses_wandb(self, method: str) -> bool:
        """Whether ``method``'s cells log to W&B: a ``wandb:`` key, else an override that picks a W&B
        logger, else the method config's own logger."""
        if self.wandb is not None:
            return True
        chosen = self._chosen_logger(method)
        if chosen is not None:
            return chosen.endswith("WandbLogger")
        logger = ((yaml.safe_load(self.methods[method].read_text()) or {}).get("trainer") or {}).get("logger")
        return isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")

    def cells(self) -> list[Cell]:
        return [Cell(m, n, s) for m in self.methods for n in self.labelled for s in self.seeds]

    def cell_dir(self, cell: Cell) -> Path:
        return self.out_dir / "cells" / cell.name

    def args(self, cell: Cell) -> list[str]:
        d = self.cell_dir(cell)
        n = "null" if cell.labelled is None else str(cell.labelled)
        cfg = yaml.safe_load(self.methods[cell.method].read_text()) or {}
        logger = (cfg.get("trainer") or {}).get("logger")
        # the cell's logs go into the cell's folder (CSV, TensorBoard and W&B loggers take save_dir)
        log_dir = (
            [f"--trainer.logger.init_args.save_dir={d}"] if isinstance(logger, dict) and "class_path" in logger else []
        )
        if (
            self._chosen_logger(cell.method) is not None
        ):  # the study's overrides pick the logger (e.g. --trainer.logger=false)
            log_dir = []
        if self.uses_wandb(
            cell.method
        ):  # one W&B run per cell, grouped by study, tagged by method / dataset / count / seed / selection
            n_tag = "all" if cell.labelled is None else str(cell.labelled)
            dataset = ((cfg.get("data") or {}).get("init_args") or {}).get("dataset", "data")
            for o in (*self.overrides, *self.method_overrides.get(cell.method, [])):
                if o.startswith(("--data.dataset=", "--data.init_args.dataset=")):
                    dataset = o.split("=", 1)[1]
            log_dir = [
                "--trainer.logger=retinalab.lightning.loggers.WandbLogger",
                f"--trainer.logger.init_args.save_dir={d}",
                f"--trainer.logger.init_args.group={self.name}",
                f"--trainer.logger.init_args.name={self.name}/{cell.name}",
                f"--trainer.logger.init_args.tags=[{cell.method},{dataset},labelled_{n_tag},seed_{cell.seed},{self.selection}]",
            ]
            log_dir += [f"--trainer.logger.init_args.{k}={v}" for k, v in (self.wandb or {}).items()]
        chooser = SELECTIONS[self.selection]
        return [
            "--config",
            str(self.methods[cell.method]),
            # an EGL active learner picks the labelled images (patch datamodules; paper 000's future work); before
            # the overrides, which may set its arguments (--data.labeled_selection.epochs=1)
            *([f"--data.labeled_selection={chooser}"] if chooser is not None else []),
            *self.overrides,
            *self.method_overrides.get(cell.method, []),
            f"--data.num_labeled_images={n}",
            f"--data.seed={cell.seed}",
            f"--seed_everything={cell.seed}",
            f"--trainer.default_root_dir={d}",
            f"--data.split_file={d / 'split.json'}",
            *log_dir,
        ]
