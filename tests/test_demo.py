"""``make demo`` prints the same figures when run twice on one machine, and writes them to a file that says
where they come from (the smoke test of its three fits is tests/cli/test_cli.py's)."""

from __future__ import annotations

import pytest

from tests.helpers.cli import DEMO_TINY
from tests.helpers.paths import REPO


@pytest.mark.slow  # the demo's three fits, twice
def test_the_demo_run_twice_on_one_machine_writes_the_same_figures(tmp_path, monkeypatch, capsys):
    from retinalab.demo import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETINALAB_CACHE", str(tmp_path / "cache"))
    common = ["--data", str(tmp_path / "syn"), "--num-images", "45", "--size", "128x96", "--conf", str(REPO / "conf")]
    tables = []
    for k in range(2):
        out = tmp_path / f"results_{k}.md"
        root = f"--trainer.default_root_dir={tmp_path / f'runs_{k}'}"
        assert run([*common, "--results", str(out), *DEMO_TINY, root]) == 0
        head, table = out.read_text().split("\n", 1)
        assert head.startswith("Written by `python -m retinalab.demo --data ") and "torch threads" in head
        assert table in capsys.readouterr().out
        tables.append(table)
    assert tables[0] == tables[1]
    assert "| SSL-GAN (semi-supervised) | best on validation | " in tables[0]


def test_a_problem_the_user_can_fix_ends_the_demo_in_one_line(tmp_path, capsys):
    from retinalab.demo import run

    assert run(["--data", str(tmp_path / "syn"), "--num-images", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: num_images must be >= 2, got 1."]
    assert not (tmp_path / "syn").exists()
