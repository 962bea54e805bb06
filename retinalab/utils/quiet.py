"""Quiet output: what a run prints is its progress, its stages and its results, not third-party notices
its user cannot act on.

Each notice is silenced at its source, never by hiding all warnings:

* Lightning's ``💡 Tip`` advertisements (``litlogger``, ``litmodels``): a filter on the one logger that
  prints them, dropping only records that start with the tip marker;
* ``isinstance(treespec, LeafSpec) is deprecated``: a warning filter on that message, for the module that
  issues it (``pytorch_lightning.utilities._pytree``, under torch >= 2.10);
* Lightning's "does not have many workers", "infer the batch indices" and "args parameter is intended to
  run from within Python" (retinalab chooses its loaders' workers, batches and arguments on purpose);
* W&B's history and summary panel after every run (``WANDB_QUIET``, W&B's own setting; set it to
  ``false`` to get the panel back). retinalab prints the one line a user needs from it: where an offline
  run is and the ``wandb sync`` command.

``RETINALAB_VERBOSE=1`` (or ``--verbose`` on any ``retinalab`` command and on the demo) brings all of
them back.
"""

from __future__ import annotations

import logging
import os
import warnings

#: the environment variable that brings third-party notices back
VERBOSE_ENV = "RETINALAB_VERBOSE"

#: (message regex, module regex) of the warnings silenced; ``None``: any module
SILENCED_WARNINGS: tuple[tuple[str, str | None], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree"),
    (r".*does not have many workers", None),
    (r".*infer the batch indices", None),
    (r".*args parameter is intended to run from within Python", None),
)

#: the loggers whose records starting with the marker are dropped
TIP_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")
TIP_MARKER = "💡 Tip"


def verbose() -> bool:
    """Whether third-party notices are wanted (``RETINALAB_VERBOSE`` set to anything but ``""``/``0``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def take_verbose_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose``; where it was there, :data:`VERBOSE_ENV` is set (for this process and
    the runs it starts)."""
    if "--verbose" not in argv:
        return argv
    os.environ[VERBOSE_ENV] = "1"
    return [a for a in argv if a != "--verbose"]


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_MARKER)


_TIPS = _DropTips()


def quiet_third_party() -> None:
    """Silence the notices listed in this module's docstring, unless :func:`verbose`. Idempotent."""
    if verbose():
        for name in TIP_LOGGERS:
            logging.getLogger(name).removeFilter(_TIPS)
        return
    for message, module in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module or "")
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)
    os.environ.setdefault("WANDB_QUIET", "true")
