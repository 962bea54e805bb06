"""The README stays a front page (under 300 lines, every link it makes resolves) and the site's home
page is written from it, so the two cannot drift."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_to_index", REPO / "tools" / "readme_to_index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 300
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+://|^#", t)]
    assert local, "the README links into docs/"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_the_site_home_page_is_the_readme_with_its_links_rewritten(tmp_path):
    tool = _tool()
    out = tool.convert(
        "see [Datasets](docs/datasets.md#the-patch-cache), [the config](conf/convnet/idrid.yaml), "
        "[W&B](https://wandb.ai) and [below](#install)"
    )
    assert "[Datasets](datasets.md#the-patch-cache)" in out
    assert f"[the config]({tool.REPO_URL}conf/convnet/idrid.yaml)" in out
    assert "[W&B](https://wandb.ai)" in out and "[below](#install)" in out
    assert tool.main([str(tmp_path / "index.md")]) == 0
    assert (tmp_path / "index.md").read_text() == tool.convert((REPO / "README.md").read_text())


def test_every_docs_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(
        p.relative_to(REPO / "docs").as_posix()
        for p in (REPO / "docs").rglob("*.md")
        if p.name != "index.md" or p.parent.name == "reference"
    )
    assert [p for p in pages if p not in nav] == []
