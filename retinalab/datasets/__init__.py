"""Readers for the published fundus dataset layouts, and a registry to pick one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.errors import check_arguments
from .base import (
    LESIONS,
    READERS,
    STRUCTURES,
    DataFormatError,
    DatasetNotFoundError,
    ErrorPolicy,
    FundusRecord,
    OnError,
    register_reader,
)
from .eophtha import read_eophtha
from .eyepacs import read_eyepacs
from .folder import read_folder
from .idrid import read_idrid
from .messidor import read_messidor

#: a registered reader's name (:data:`READERS`), or ``module:name`` of a module registering one
DatasetName = str


def read_dataset(name: str, root: str | Path, **kwargs: Any) -> list[FundusRecord]:
    """Read dataset ``name`` at ``root``; ``kwargs`` go to its reader (e.g. ``subsets``, ``on_error``).

    Raises:
        ConfigError: an unknown name (listing the known ones), or a keyword the reader does not take
            or of the wrong type (listing its options), checked before anything is read.
        DatasetNotFoundError: from the reader, where the layout is not found.
        DataFormatError: from the reader, marked with ``(name, root)`` for the ``retinalab check-data``
            pointer of the command line's message.
    """
    check_reader_args(name, kwargs)
    try:
        return READERS.get(name)(root, **kwargs)
    except DataFormatError as e:
        # check-data lists every problem of a readable layout at once (where the layout is not found,
        # the reader's message already says where to get it)
        if e.check_data is None:
            e.check_data = (name, str(root))
        raise


def check_reader_args(name: str, args: dict[str, Any], option: str = "data.reader_args") -> None:
    """Check ``args`` against reader ``name``'s keywords before anything is read (``option``: how the
    user sets them, for the message).

    Raises:
        ConfigError: an unknown dataset, a key the reader does not take (with its options) or a value
            of the wrong type (with the expected type).
    """
    reader = READERS.get(name, "dataset")  # an unknown name: one line listing the registered readers
    check_arguments(reader, args, f"{name} reader", option, skip=("root",))


__all__ = [
    "LESIONS",
    "STRUCTURES",
    "READERS",
    "DataFormatError",
    "DatasetName",
    "DatasetNotFoundError",
    "ErrorPolicy",
    "check_reader_args",
    "FundusRecord",
    "OnError",
    "read_dataset",
    "read_eophtha",
    "read_eyepacs",
    "read_folder",
    "read_idrid",
    "read_messidor",
    "register_reader",
]
