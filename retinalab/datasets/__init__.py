"""Readers for the published fundus dataset layouts, and a registry to pick one by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .base import (
    LESIONS,
    STRUCTURES,
    DataFormatError,
    DatasetNotFoundError,
    ErrorPolicy,
    FundusRecord,
    OnError,
)
from .eophtha import read_eophtha
from .eyepacs import read_eyepacs
from .folder import read_folder
from .idrid import read_idrid
from .messidor import read_messidor

DatasetName = Literal["idrid", "eophtha", "eyepacs", "messidor", "folder"]

READERS: dict[str, Callable[..., list[FundusRecord]]] = {
    "idrid": read_idrid,
    "eophtha": read_eophtha,
    "eyepacs": read_eyepacs,
    "messidor": read_messidor,
    "folder": read_folder,
}


def read_dataset(name: str, root: str | Path, **kwargs: Any) -> list[FundusRecord]:
    """Read dataset ``name`` at ``root``; ``kwargs`` go to its reader (e.g. ``subsets``, ``on_error``).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(READERS)}")
    return READERS[name](root, **kwargs)


__all__ = [
    "LESIONS",
    "STRUCTURES",
    "READERS",
    "DataFormatError",
    "DatasetName",
    "DatasetNotFoundError",
    "ErrorPolicy",
    "FundusRecord",
    "OnError",
    "read_dataset",
    "read_eophtha",
    "read_eyepacs",
    "read_folder",
    "read_idrid",
    "read_messidor",
]
