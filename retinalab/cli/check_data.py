"""``retinalab check-data``: validate a dataset without training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..utils.errors import ArgumentParser, ConfigError, UserError

DESCRIPTION = "validate a dataset without training: retinalab check-data --dataset folder --root DIR"


def main(argv: Sequence[str]) -> int:
    """``retinalab check-data``: see :mod:`retinalab.check`. Exit 0 when clean, 1 with problems, 2 when
    the dataset cannot be read at all."""
    import json

    from ..check import check_dataset
    from ..datasets import READERS, check_reader_args

    p = ArgumentParser(prog="retinalab check-data", description=DESCRIPTION)
    p.add_argument("--dataset", required=True, choices=READERS.names(), help="layout to read (a registered reader)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument(
        "--reader-args", default="{}", help='reader arguments as JSON, e.g. \'{"subsets": ["segmentation"]}\''
    )
    p.add_argument(
        "--out", default=None, help="where check.json and contact_sheet.png go (default check-data/<dataset>)"
    )
    p.add_argument("--sample", type=int, default=16, help="photographs on the contact sheet (default 16)")
    p.add_argument("--thumb", type=int, default=192, help="side of each contact-sheet tile in px (default 192)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel decoding processes")
    a = p.parse_args(list(argv))
    try:
        reader_args = json.loads(a.reader_args)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f'--reader-args is not JSON ({e}); write it like \'{{"subsets": ["segmentation"]}}\''
        ) from None
    if not isinstance(reader_args, dict):
        raise ConfigError(f"--reader-args must be a JSON object of the reader's options, not {a.reader_args!r}")
    check_reader_args(a.dataset, reader_args, "--reader-args")
    out = Path(a.out) if a.out else Path("check-data") / a.dataset
    try:
        report = check_dataset(a.dataset, a.root, reader_args, out, a.sample, a.thumb, a.workers)
    except UserError as e:  # the layout cannot be read at all: the pointer to check-data would point here
        e.check_data = None
        raise
    print(report.text())
    print(f"report: {out / 'check.json'}; contact sheet: {out / 'contact_sheet.png'}")
    return 0 if report.ok else 1
