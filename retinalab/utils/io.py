"""Files written whole or not at all, in one place.

Every file retinalab writes for a user (tables, JSON records, figures, checkpoints) goes through
:func:`write_atomic`: the bytes go to a hidden temporary file beside the target, are flushed to disk
and renamed over the target (``os.replace``, atomic within one file system). A kill or a full disk at
any byte leaves the previous version of the file readable and no partial one in its place.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """The hidden file beside ``path`` that this process writes before renaming it over ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_bytes(f: Any, data: bytes | memoryview) -> None:
    """The one place bytes reach a temporary file (the kill-during-write tests wrap it)."""
    f.write(data)


def write_atomic(path: str | Path, data: bytes | memoryview | str, *, remove_strays: bool = False) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; create the parent folder.

    Args:
        path: the target file.
        data: its whole content.
        remove_strays: also remove the temporary files of earlier writes to ``path`` that were killed
            before their rename (only where one process writes the file at a time: checkpoints).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    tmp = temporary_name(target)
    try:
        with open(tmp, "wb") as f:
            _write_bytes(f, payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            e.filename = str(target)  # name the file the user knows, not the temporary one that is gone
        raise
    if remove_strays:
        for stray in target.parent.glob(f".{target.name}.*.tmp"):
            stray.unlink(missing_ok=True)
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` for text."""
    return write_atomic(path, text)


def write_json_atomic(path: str | Path, payload: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """``payload`` as JSON (indent 1), atomically; ``default`` as in :func:`json.dumps`."""
    return write_atomic(path, json.dumps(payload, indent=1, default=default))


def write_csv_atomic(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """A CSV file of ``header`` and ``rows``, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return write_atomic(path, buf.getvalue())


def write_dict_rows_atomic(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """A CSV file of dict rows (columns: every key, in order of first appearance), atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return write_atomic(path, buf.getvalue())


def save_png_atomic(arr: Any, path: str | Path) -> Path:
    """An ``H x W`` or ``H x W x C`` uint8 array as a PNG, atomically: never a half-written image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return write_atomic(path, buf.getvalue())


def save_figure_atomic(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG (``bbox_inches="tight"``), atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically; strays of writes killed earlier are removed."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getbuffer(), remove_strays=True)
