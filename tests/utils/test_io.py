"""retinalab.utils.io: every file is written whole or not at all."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from PIL import Image

import retinalab.utils.io as rio


def test_each_writer_writes_its_format_and_leaves_no_temporary_file(tmp_path):
    d = tmp_path / "new" / "folder"  # parents are created
    rio.write_json_atomic(d / "a.json", {"x": 1, "p": tmp_path}, default=str)
    rio.write_csv_atomic(d / "b.csv", ["h1", "h2"], [[1, "a"], [2, "b"]])
    rio.write_dict_rows_atomic(d / "c.csv", [{"k": 1}, {"k": 2, "j": 3}])
    rio.write_text_atomic(d / "d.md", "# title")
    rio.save_png_atomic(np.full((4, 5, 3), 7, np.uint8), d / "e.png")
    rio.atomic_torch_save({"w": torch.arange(3)}, d / "f.pt")
    assert json.loads((d / "a.json").read_text()) == {"x": 1, "p": str(tmp_path)}
    assert (d / "b.csv").read_text().splitlines() == ["h1,h2", "1,a", "2,b"]
    assert (d / "c.csv").read_text().splitlines() == ["k,j", "1,", "2,3"]
    assert (d / "d.md").read_text() == "# title"
    assert np.asarray(Image.open(d / "e.png")).shape == (4, 5, 3)
    assert torch.equal(torch.load(d / "f.pt")["w"], torch.arange(3))
    assert sorted(p.name for p in d.iterdir()) == ["a.json", "b.csv", "c.csv", "d.md", "e.png", "f.pt"]


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_halfway_keeps_the_previous_file(tmp_path, monkeypatch, fault):
    path = rio.write_json_atomic(tmp_path / "state.json", {"round": 1})
    real = rio._write_bytes

    def half_then_fail(f, data):
        real(f, data[: len(data) // 2])
        raise fault

    monkeypatch.setattr(rio, "_write_bytes", half_then_fail)
    with pytest.raises(type(fault)):
        rio.write_json_atomic(path, {"round": 2, "more": list(range(100))})
    assert json.loads(path.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_torch_saves_remove_the_strays_of_killed_writes(tmp_path):
    stray = tmp_path / ".last.ckpt.99999.tmp"  # a process killed during its write left it
    stray.write_bytes(b"half")
    other = tmp_path / ".other.ckpt.99999.tmp"  # another file's write: not ours to remove
    other.write_bytes(b"half")
    rio.atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert not stray.exists() and other.exists()
