"""Where ``retinalab.main`` went, for scripts written against earlier versions: the command line is
:mod:`retinalab.cli` (``main(argv)``) and the Lightning CLI :mod:`retinalab.lightning.cli` (``cli``,
``finish_wandb``). Importing this module works, with a warning naming the new place."""

from __future__ import annotations

import warnings

from .cli import main
from .lightning.cli import cli, finish_wandb

__all__ = ["cli", "finish_wandb", "main"]

warnings.warn(
    "retinalab.main is now retinalab.cli (main) and retinalab.lightning.cli (cli, finish_wandb); "
    "change the import, this module will go",
    FutureWarning,
    stacklevel=2,
)
