"""Whole fundus photographs as samples: the grade targets, the dataset, its collate and sampler.

:class:`FundusImageDataset` decodes and preprocesses (field-of-view crop, resize, max-normalisation)
in the DataLoader workers; with ``truth_dataset_root`` (a synthetic dataset's root) it also loads
the drawn lesion masks of photographs the layout labels per image only (paper 001's pseudo-mask
quality and ``oracle`` arm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..datasets import LESIONS, DataFormatError, FundusRecord, OnError
from ..datasets.truth import truth_masks
from ..preprocessing import load_fundus, stack_masks

log = logging.getLogger(__name__)

GradeTarget = Literal["grade", "referable", "normal"]
#: Grade scale per dataset: ICDR 0-4, Messidor 0-3.
NUM_GRADES = {"idrid": 5, "eyepacs": 5, "eophtha": 5, "messidor": 4}


def grade_target(grade: int, target: GradeTarget) -> int:
    """Map a grade to the requested label: the grade itself, referable (grade >= 2) or normal (grade == 0)."""
    if target == "grade":
        return grade
    if target == "referable":
        return int(grade >= 2)
    if target == "normal":
        return int(grade == 0)
    raise ValueError(f"target must be one of grade/referable/normal, got {target!r}")


def record_target(record: FundusRecord, target: GradeTarget) -> int | None:
    """The record's label for ``target``: from its grade, or (``referable`` only) from a referable-only
    label (the generic folder layout's ``referable`` column); ``None`` when unlabelled."""
    if record.grade is not None:
        return grade_target(record.grade, target)
    if target == "referable" and "referable" in record.meta:
        return int(record.meta["referable"])
    return None


class FundusImageDataset(Dataset):
    """Preprocessed whole fundus images, optionally with stacked lesion masks and grades.

    Each sample: ``image`` (3 x S x S float in [0, 1]), ``image_id``, ``label`` (int64, -1 when
    unknown) and, with ``with_masks``, ``mask`` (L x S x S float 0/1: a pixel is lesion when any of its
    source pixels is) and ``mask_known`` (L bool); with ``mask_fraction`` (evaluation: no transform)
    also ``mask_fraction`` (L x S x S float: the lesion share of each pixel, which pixel metrics weigh).
    With ``on_error="skip"`` a photograph or mask that fails to decode yields ``None`` (logged),
    which :func:`skip_none_collate` drops from the batch.

    With ``truth_dataset_root`` (a synthetic dataset drawn by ``retinalab synth``, for photographs its
    layout labels per image only) each sample also carries the drawn masks the generator keeps under
    ``<root>/_truth`` (:func:`retinalab.datasets.truth.truth_masks`): ``truth`` (L x S x S float 0/1,
    transformed with the image like ``mask``) and, with ``mask_fraction``, ``truth_fraction``. A
    lesion without a file is absent from the photograph (all zeros). Not with ``with_masks``.
    """

    def __init__(
        self,
        records: Sequence[FundusRecord],
        size: int,
        target: GradeTarget = "grade",
        with_masks: bool = False,
        lesions: tuple[str, ...] = LESIONS,
        transform: Any = None,
        crop_fov: bool = True,
        normalize: bool = True,
        on_error: OnError = "raise",
        mask_fraction: bool = False,
        truth_dataset_root: str | Path | None = None,
    ) -> None:
        if mask_fraction and transform is not None:
            raise ValueError("mask_fraction is for evaluation images: it cannot go with a (training) transform")
        if with_masks and truth_dataset_root is not None:
            raise ValueError(
                "truth_dataset_root is for photographs without published masks: it cannot go with with_masks"
            )
        self.records = list(records)
        self.size, self.target, self.with_masks, self.lesions = size, target, with_masks, tuple(lesions)
        self.transform, self.crop_fov, self.normalize, self.on_error = transform, crop_fov, normalize, on_error
        self.truth_dataset_root = (
            None if truth_dataset_root is None else Path(truth_dataset_root).expanduser().resolve()
        )
        self.mask_fraction = mask_fraction and (with_masks or self.truth_dataset_root is not None)

    def _with_truth(self, r: FundusRecord) -> FundusRecord:
        """``r`` with its drawn masks (every lesion annotated: absent ones empty) in place of its published ones."""
        image = Path(r.image_path).expanduser().resolve()
        try:
            found = truth_masks(self.truth_dataset_root, image)
        except ValueError as e:
            raise DataFormatError(
                f"{r.image_path}: not under {self.truth_dataset_root}, whose _truth folder holds the drawn masks"
            ) from e
        return replace(r, masks={les: found.get(les) for les in self.lesions})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, k: int) -> dict[str, Any] | None:
        r = self.records[k]
        truth = self.truth_dataset_root is not None
        try:
            pre = load_fundus(
                self._with_truth(r) if truth else r,
                self.size,
                self.crop_fov,
                self.normalize,
                self.lesions if self.with_masks or truth else None,
                mask_mode="fraction" if self.mask_fraction else "any",
            )
        except DataFormatError as e:
            if self.on_error == "raise":
                raise
            log.warning("skipping: %s", e)
            return None
        image = pre.image
        fraction = None
        if self.mask_fraction:
            fraction, known = stack_masks(pre.masks, self.size, self.lesions, np.float32)
            masks = (fraction > 0).astype(np.uint8)  # the same 0/1 mask as without mask_fraction
        else:
            masks, known = stack_masks(pre.masks, self.size, self.lesions)
        if self.transform is not None:
            if self.with_masks or truth:
                res = self.transform(image=image, mask=np.ascontiguousarray(masks.transpose(1, 2, 0)))
                image, masks = res["image"], np.ascontiguousarray(res["mask"]).transpose(2, 0, 1)
            else:
                image = self.transform(image=image)["image"]
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "image_id": r.image_id,
            "label": -1 if (y := record_target(r, self.target)) is None else y,
        }
        if self.with_masks:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(masks)).float()
            out["mask_known"] = torch.from_numpy(known)
            if fraction is not None:
                out["mask_fraction"] = torch.from_numpy(fraction)
        elif truth:
            out["truth"] = torch.from_numpy(np.ascontiguousarray(masks)).float()
            if fraction is not None:
                out["truth_fraction"] = torch.from_numpy(fraction)
        return out


def skip_none_collate(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Collate the samples that decoded; ``None`` when none did (Lightning then skips the step)."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


class EpochWeightedSampler(torch.utils.data.WeightedRandomSampler):
    """``WeightedRandomSampler`` whose draws are a function of ``(seed, epoch)``: Lightning calls
    ``set_epoch`` before every training epoch, so a run resumed at epoch ``e`` draws what the
    uninterrupted run drew there (a generator seeded once would start over at its first draws)."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int) -> None:
        super().__init__(weights, num_samples, replacement=True, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204 (the base's signature)
        assert self.generator is not None
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()
