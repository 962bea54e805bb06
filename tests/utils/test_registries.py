"""Adding a backbone, an acquisition or a dataset reader is one decorated definition in one module plus a
config naming it (``module:name``): shown here with toys that retinalab has never heard of."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml

from retinalab.active import HEURISTICS, heuristic_names
from retinalab.datasets import READERS, read_dataset
from retinalab.models import BACKBONES, build_patch_model
from retinalab.utils.errors import ConfigError
from retinalab.utils.registry import Registry
from tests.helpers.active import assert_top, loop
from tests.helpers.cli import TINY, run

TOY_BACKBONE = """
from torch import nn

from retinalab.models import register_backbone


@register_backbone("tiny", options=("dropout",))
def tiny(num_classes: int, width: float, weights, dropout: float = 0.0) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(dropout), nn.Linear(5, num_classes))
    net.toy_dropout = dropout
    return net
"""

TOY_HEURISTIC = '''
from retinalab.active import Heuristic, register_heuristic
from retinalab.active.heuristics import predict_probs


@register_heuristic
class MostExudate(Heuristic):
    """The patches the model finds most likely to hold an exudate, first."""

    name, colour = "most_exudate", "tab:olive"
    score_name = ("p(exudate)", "probability")

    def scores(self, model, x, scope="fc", mc_samples=20, seed=0):
        p = predict_probs(model, x)
        return p[:, 1].double(), p
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A folder on ``sys.path`` (and the subprocess's ``PYTHONPATH``) to write a lab's module into; what
    it registered is taken away afterwards."""
    folder = tmp_path / "lab"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}")
    yield folder
    for registry, name in ((BACKBONES, "tiny"), (HEURISTICS, "most_exudate"), (READERS, "toy_layout")):
        registry.unregister(name)


def test_registry_refuses_a_taken_name_and_lists_the_registered_ones():
    reg: Registry = Registry("widget")
    reg.register("a")(len)
    reg.register("a")(len)  # the same definition again (a module imported twice): allowed
    with pytest.raises(ValueError, match="widget 'a' is registered already, by builtins.len"):
        reg.register("a")(sum)
    with pytest.raises(ConfigError, match=r"opt: unknown widget 'b'; choose one of a \(or module:name"):
        reg.get("b", "opt")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        reg.get("no_such_module_xyz:b")
    with pytest.raises(ConfigError, match="json registers no widget 'b'; registered: a"):
        reg.get("json:b")


def test_a_toy_backbone_is_one_module_and_a_config(plugin, synth_idrid, tmp_path):
    (plugin / "toynets.py").write_text(TOY_BACKBONE)
    config = yaml.safe_load(TINY.read_text())
    config["model"]["init_args"].update(backbone="toynets:tiny", dropout=0.25)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "fit"
    run(
        [
            "fit",
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--data.root",
            "syn",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(out),
            "--data.split_file",
            str(tmp_path / "split.json"),
        ],
        synth_idrid,
    )
    ckpt = torch.load(next(out.rglob("*.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["backbone"] == "toynets:tiny"
    weights = {k.removeprefix("model.") for k in ckpt["state_dict"] if k.startswith("model.")}
    assert weights == {"0.weight", "0.bias", "5.weight", "5.bias"}, list(ckpt["state_dict"])
    # the registry passes the options the backbone takes (dropout) and leaves out those it does not
    net = build_patch_model("toynets:tiny", num_classes=3, dropout=0.25, dropout_in=0.9)
    assert net.toy_dropout == 0.25 and net(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ConfigError, match="pretrained weights are only for the backbones that take them"):
        build_patch_model("toynets:tiny", weights="imagenet")


def test_an_unknown_backbone_is_one_line_listing_the_registered_ones(synth_idrid, tmp_path):
    res = run(
        [
            "fit",
            "--config",
            str(TINY),
            "--data.root",
            "syn",
            "--model.backbone",
            "vgg",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        synth_idrid,
        check=False,
    )
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert "unknown backbone 'vgg'; choose one of convnet, resnet18, resnet34, resnet50" in line, res.stderr[-2000:]


def test_a_toy_acquisition_is_one_module_and_a_config(plugin, synth_eophtha, tmp_path):
    (plugin / "toyheuristics.py").write_text(TOY_HEURISTIC)
    out = tmp_path / "most_exudate"
    al = loop(
        synth_eophtha,
        out,
        acquisition="toyheuristics:most_exudate",
        select="patches",
        max_rounds=1,
        keep_checkpoints=True,
        track_images=0,
        score_batch_size=100_000,
    )
    assert al.run() == "finished"
    assert "most_exudate" in heuristic_names()
    state = json.loads((out / "state.json").read_text())
    from retinalab.models.lenet import LeNet

    net = LeNet(2, al.options.patches.patch_size, 3, (4, 8), 16)
    net.load_state_dict(torch.load(out / "model-round000.pt", weights_only=True)["model"])
    net.eval()
    round0 = {row["item"] for row in state["history"] if row["round"] == 0}
    rest = [int(i) for i in al.data.pool_items if int(i) not in round0]
    with torch.no_grad():
        p = torch.softmax(net(al.pool.tensor(rest)), 1)[:, 1].tolist()
    phi = dict(zip(rest, p, strict=True))
    round1 = {row["item"] for row in state["history"] if row["round"] == 1}
    assert_top(round1, phi, 6)  # round 1 asked for the 6 patches the model found most likely exudates
    from retinalab.active.plots import _colour

    assert _colour("most_exudate") == "tab:olive"  # its figures take its colour from the registry


def test_a_toy_reader_is_one_module_and_a_config(plugin, tmp_path, capsys):
    (plugin / "toyreaders.py").write_text(
        textwrap.dedent("""
        from pathlib import Path

        from retinalab.datasets import FundusRecord, register_reader


        @register_reader("toy_layout")
        def read_toy(root, grade: int = 0, on_error="raise"):
            return [FundusRecord(image_id=p.stem, image_path=p, dataset="toy_layout", split="train", grade=grade)
                    for p in sorted(Path(root).glob("*.png"))]
    """)
    )
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 48), (120, 40 * i, 20)).save(tmp_path / f"eye{i}.png")
    records = read_dataset("toyreaders:toy_layout", tmp_path, grade=3)
    assert [(r.image_id, r.grade) for r in records] == [("eye0", 3), ("eye1", 3)]
    with pytest.raises(ConfigError, match="toy_layout reader"):  # its keywords are checked before reading
        read_dataset("toy_layout", tmp_path, grades=3)
