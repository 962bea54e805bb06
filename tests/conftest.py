import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")

from tests.data.eophtha.data import make_eophtha  # noqa: E402
from tests.data.eyepacs.data import make_eyepacs  # noqa: E402
from tests.data.folder.data import make_folder  # noqa: E402
from tests.data.idrid.data import make_idrid  # noqa: E402
from tests.data.messidor.data import make_messidor  # noqa: E402


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
