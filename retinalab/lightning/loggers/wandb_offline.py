"""Read back an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``).

wandb >= 0.2x writes offline runs only as this binary record log (no ``wandb-summary.json``, and the
old Python ``datastore`` reader is gone). The format is LevelDB's log: a 7-byte file header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header (CRC32,
little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a slice of a protobuf ``Record``.
Used by the tests and by anyone who wants a run's numbers without syncing it.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yield the protobuf ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < HEADER or data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (no ':W&B' header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if pos + length > len(
            data
        ):  # the file ends inside this record (a process killed while writing): what came before is whole
            return
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos - length - HEADER}")
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(pending)
        pending = b""
        yield rec


def _items(items) -> dict[str, Any]:
    out = {}
    for it in items:
        key = it.key or "/".join(it.nested_key)
        try:
            out[key] = json.loads(it.value_json)
        except json.JSONDecodeError:
            out[key] = it.value_json
    return out


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """``{"history": [row, ...], "summary": {...}, "config": {...}}`` of an offline run file (or of the
    ``offline-run-*`` folder holding it)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"{path}: no run-*.wandb file")
        path = files[0]
    history, summary, config = [], {}, {}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(rec.history.item))
        elif kind == "summary":
            summary.update(_items(rec.summary.update))
        elif kind in ("config", "run"):
            update = rec.config.update if kind == "config" else rec.run.config.update
            for key, value in _items(update).items():
                config[key] = value.get("value", value) if isinstance(value, dict) and "value" in value else value
    return {"history": history, "summary": summary, "config": config}


def wait_for_offline_run(run_dir: str | Path, timeout: float = 120.0) -> bool:
    """Wait until the offline run in ``run_dir`` (an ``offline-run-*`` folder) holds its ``exit`` record.

    ``wandb.Run.finish()`` returns before W&B's service has written the run file to its end, so a
    reader right after it (a test, a script that reads the numbers back) can find the last records
    missing. Returns ``False`` when ``timeout`` seconds pass first, with a warning: on a busy machine the
    service can take tens of seconds after a run that logged its checkpoints as artifacts (15 s, the earlier
    limit, was once too short on the 2-core CI box: a test read the run file before its artifacts).
    """
    import time

    run_dir = Path(run_dir)
    deadline = time.monotonic() + timeout
    while True:
        for f in run_dir.glob("run-*.wandb"):
            try:
                if any(r.WhichOneof("record_type") == "exit" for r in iter_records(f)):
                    return True
            except Exception:  # noqa: BLE001 - a record cut at the end of a file still being written (protobuf DecodeError, ...)
                pass
        if time.monotonic() > deadline:
            logging.getLogger(__name__).warning(
                "W&B's offline run in %s is still being written after %.0f s; reading it now may miss its last records",
                run_dir,
                timeout,
            )
            return False
        time.sleep(0.05)
