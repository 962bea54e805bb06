"""The finished tiny fit the fault tests write over, refuse on, or read a checkpoint from."""

from __future__ import annotations

import pytest

from tests.helpers.faults import tiny_fit


@pytest.fixture(scope="package")
def earlier_fit(tmp_path_factory):
    """A synthetic IDRiD and a finished tiny fit whose run folder is ``runs`` (no logger: files at its top)."""
    from retinalab.cli import main
    from retinalab.synthetic import write_synthetic

    work = tmp_path_factory.mktemp("faults")
    syn = write_synthetic("idrid", work / "syn", 24, 5, (128, 96), workers=1)
    assert main(tiny_fit(syn, work / "runs")) == 0
    return syn, work / "runs"
