"""Checkpoints that fail with a clear message (a truncated file, another task's, another width's),
and that are written atomically.

``retinalab fit/validate/test/predict --ckpt_path X`` checks ``X`` against the model the config
built before Lightning loads it (:func:`check_checkpoint`), so a wrong file is named with what is
wrong instead of surfacing as a stack trace from inside ``torch.load`` or ``load_state_dict``.
Every Lightning command of retinalab writes its checkpoints with :class:`AtomicCheckpointIO`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .utils.errors import UserError
from .utils.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, with a write that is atomic on any local file system.

    Lightning writes through an fsspec transaction, whose local implementation writes a file made by
    ``tempfile.mkstemp()`` (in the system's temporary folder) and moves it into place at the end. When
    that folder is on another file system than the checkpoints (a node's local ``/tmp``, checkpoints
    on NFS or Lustre, as on most clusters), the move is a copy onto the target, and a kill during it
    leaves a truncated checkpoint in place of the previous one. This one writes a hidden temporary file
    beside the target, flushes it to disk and renames it over the target (``os.replace``, atomic
    within one file system); a kill at any point leaves the previous checkpoint whole. Remote URLs
    (``s3://``...) and ``storage_options`` go to Lightning's own.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None


def use_atomic_checkpoints(trainer: Any) -> None:
    """Give ``trainer`` :class:`AtomicCheckpointIO` where it would use Lightning's default
    ``TorchCheckpointIO`` (a strategy or plugin with its own checkpoint IO keeps it)."""
    strategy = trainer.strategy
    if strategy._checkpoint_io is None or type(strategy._checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, tensors only (``weights_only=True``: no pickled code runs)
    where it allows, else in full (Lightning's own ``hyper_parameters`` can hold objects ``weights_only``
    refuses; the file is the user's own run).

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(
            f"{p}: the checkpoint is empty (0 bytes): a write that was interrupted? Use the previous checkpoint"
        )
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # objects beyond tensors in hyper_parameters: trusted local file
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
    # bytes that are not a checkpoint fail in torch's unpickler with whatever its stack machine meets
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        pickle.UnpicklingError,
        IndexError,
        KeyError,
        ValueError,
        TypeError,
    ) as e:
        raise CheckpointError(
            f"{p}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "truncated by a kill during the write, or not a .ckpt file?"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: no 'state_dict' in this file: not a Lightning checkpoint")
    return ckpt


def shape_mismatches(weights: dict[str, Any], module: torch.nn.Module) -> tuple[list[tuple[str, tuple, tuple]], str]:
    """The weights of ``weights`` whose shape differs from ``module``'s (name, in the file, here), and
    the first three as a sentence."""
    ours = module.state_dict()
    shapes = [
        (k, tuple(v.shape), tuple(ours[k].shape))
        for k, v in weights.items()
        if k in ours and hasattr(v, "shape") and v.shape != ours[k].shape
    ]
    return shapes, "; ".join(f"{k}: {a} in the file, {b} here" for k, a, b in shapes[:3])


def check_checkpoint(path: str | Path, model: torch.nn.Module, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``path`` (or take its already read ``ckpt``) and check that its weights fit ``model``: the
    same parameter names and shapes.

    Raises:
        CheckpointError: unreadable (see :func:`read_checkpoint`), from another task (names differ), or
            from another configuration of this task (shapes differ: another ``width``, backbone, number
            of classes...); the message names the file and the first differences.
    """
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    task = type(model).__name__
    if missing and len(missing) + len(unexpected) > 0.5 * max(len(ours), 1):
        prefixes = sorted({k.split(".")[0] for k in theirs})
        raise CheckpointError(
            f"{path}: a checkpoint of another task: its weights ({', '.join(prefixes)}) are not those of "
            f"{task} ({', '.join(sorted({k.split('.')[0] for k in ours}))})"
        )
    shapes, listed = shape_mismatches(ckpt["state_dict"], model)
    if shapes:
        hp = ckpt.get("hyper_parameters") or {}
        hint = {
            k: hp[k]
            for k in ("width", "gen_width", "backbone", "num_classes", "generator_width", "discriminator_width")
            if k in hp
        }
        raise CheckpointError(
            f"{path}: {len(shapes)} weight(s) of another shape than this {task}'s ({listed}); "
            f"the checkpoint was trained with {hint or 'other settings'}: pass the same to --model"
        )
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not fit this {task}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ckpt
