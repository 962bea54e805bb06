import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: one torch thread each instead of
    # both fighting over two (the processes the tests start keep torch's default)
    import torch

    torch.set_num_threads(1)

from tests.data.eophtha.data import make_eophtha  # noqa: E402
from tests.data.eyepacs.data import make_eyepacs  # noqa: E402
from tests.data.folder.data import make_folder  # noqa: E402
from tests.data.idrid.data import make_idrid  # noqa: E402
from tests.data.messidor.data import make_messidor  # noqa: E402
from tests.helpers.active import synth_eophtha  # noqa: E402, F401  (a fixture for every test module)
from tests.helpers.cli import synth_idrid  # noqa: E402, F401  (a fixture for every test module)


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    """Every test starts from the same random state. Without this a test's state depended on the test
    files pytest-xdist had run before it on its worker, which changes from run to run: an unseeded
    training test passed for weeks and then failed once in CI."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def idrid_root(tmp_path):
    return make_idrid(tmp_path / "IDRiD")


@pytest.fixture
def eophtha_root(tmp_path):
    return make_eophtha(tmp_path / "e-ophtha")


@pytest.fixture
def eyepacs_root(tmp_path):
    return make_eyepacs(tmp_path / "eyepacs")


@pytest.fixture
def messidor_root(tmp_path):
    return make_messidor(tmp_path / "messidor")


@pytest.fixture
def folder_root(tmp_path):
    return make_folder(tmp_path / "my_clinic")


@pytest.fixture(scope="module")
def easy_idrid(tmp_path_factory):
    """The learning tests' photographs (tests/learning/test_learning.py, tests/learning/test_learning_001.py): 90 in the
    IDRiD layout, ``easy`` preset, about 48 of them with patch labels (the pixel-annotated ones and the
    grade-0 ones). Built once per module, so each learning file can run on its own worker."""
    from retinalab.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("learning")
    write_synthetic("idrid", root / "idrid", num_images=90, seed=7, size=(384, 256), preset="easy")
    return root


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_into_the_repository():
    """Runs must write under tmp_path: a test whose trainer falls back to the working directory
    (no logger, no default_root_dir) would leave config.yaml, split.json or overlays/ in the checkout."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    before = {p.name for p in repo.iterdir()}
    yield
    new = sorted({p.name for p in repo.iterdir()} - before - {".pytest_cache", ".ruff_cache", ".cache"})
    assert not new, f"the tests wrote {new} into {repo}; give those runs a default_root_dir under tmp_path"
