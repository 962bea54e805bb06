"""Build a tiny copy of e-ophtha's layout (e_optha_EX, e_optha_MA) with its quirks:
``.JPG`` suffixes, ``Thumbs.db`` files, ``<stem>_EX.png`` vs ``<stem>.png`` masks, patient folders."""

from __future__ import annotations

from pathlib import Path

from ..common import SIZE, fundus, save_jpg, save_mask, square_mask

#: part -> kind -> patient -> image stems
LAYOUT = {
    "EX": {
        "EX": {"E0000404": ["C0001885", "C0001886"], "E0000405": ["DS000CMK"]},
        "healthy": {"E0000500": ["C0002000"], "E0000501": ["C0002001"]},
    },
    "MA": {
        "MA": {"E0000600": ["C0003000"], "E0000601": ["C0003001", "C0003002"]},
        "healthy": {"E0000700": ["C0004000"]},
    },
}


def make_eophtha(root: Path) -> Path:
    n = 0
    for part, kinds in LAYOUT.items():
        top = root / f"e_optha_{part}"
        for kind, patients in kinds.items():
            for patient, stems in patients.items():
                (top / kind / patient).mkdir(parents=True, exist_ok=True)
                (top / kind / patient / "Thumbs.db").write_bytes(b"\0\1")
                for stem in stems:
                    n += 1
                    ext = ".JPG" if n % 3 == 0 else ".jpg"
                    save_jpg(top / kind / patient / f"{stem}{ext}", fundus(seed=n))
                    if kind != "healthy":
                        name = f"{stem}_EX.png" if part == "EX" else f"{stem}.png"
                        save_mask(top / f"Annotation_{part}" / patient / name, square_mask(SIZE, 30, 40), "grey")
    return root
