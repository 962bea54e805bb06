"""Pretrained weights through the Hugging Face cache, without a network (issue 32 item 5).

The tests build a hub cache folder themselves (``models--<org>--<name>/snapshots/<rev>/`` with
``refs/main``) holding weights of a small timm model they saved, set ``HF_HUB_OFFLINE=1`` and
``HF_HOME``, and check what loads. ``huggingface_hub`` reads its cache location and offline flag into
``huggingface_hub.constants`` when it is imported (earlier in this process, by timm), so the fixture
sets those constants as well as the variables.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retinalab.cli import main
from retinalab.weights import (
    WeightsNotFoundError,
    WeightsSource,
    config_sources,
    create_timm_model,
    resolve,
)

REPO = Path(__file__).resolve().parents[1]
HUB_ID = "timm/resnet18.a1_in1k"  # timm's default pretrained tag of resnet18 (weights: imagenet)
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hugging Face home whose hub cache holds resnet18's 'imagenet' weights: a ResNet18
    with seeded random weights, saved by this test, so a load can be compared tensor by tensor."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    home = tmp_path / "hf"
    snapshot = home / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    torch.manual_seed(123)
    source = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home, source.state_dict()


def test_imagenet_weights_load_exactly_from_the_offline_cache_with_their_normalisation(offline_hub):
    _, saved = offline_hub
    assert resolve("resnet18", "imagenet") == WeightsSource("resnet18", "hub", HUB_ID)
    model = create_timm_model("resnet18", "imagenet", num_classes=2)
    got = model.state_dict()
    for k, v in saved.items():
        if not k.startswith("fc."):  # timm replaces the classifier for num_classes
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (2, 512)
    assert set(got) == set(saved)  # the normalisation's buffers are not in the state_dict
    # the input is normalised with the weights' mean and std before the first convolution
    seen = {}
    model.conv1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model.eval()(torch.full((1, 3, 32, 32), 0.485))
    assert seen["x"][0, 0].abs().max() < 1e-6 and seen["x"][0, 1].mean() == pytest.approx(
        (0.485 - 0.456) / 0.224, abs=1e-5
    )
    # from scratch: no normalisation, weights not the cached ones
    scratch = create_timm_model("resnet18", None, num_classes=2)
    assert not torch.equal(scratch.state_dict()["conv1.weight"], saved["conv1.weight"]) and not hasattr(
        scratch, "input_mean"
    )


def test_missing_weights_offline_are_one_message_with_the_id_cache_and_command(offline_hub, capsys, tmp_path):
    home, _ = offline_hub
    with pytest.raises(WeightsNotFoundError) as e:
        create_timm_model("resnet34", "imagenet", num_classes=2)
    text = str(e.value)
    assert "'timm/resnet34.a1_in1k'" in text and str(home / "hub") in text and "HF_HUB_OFFLINE=1 is set" in text
    assert "retinalab weights fetch resnet34=hf-hub:timm/resnet34.a1_in1k" in text
    # through the command line: one line, exit 2
    argv = [
        "fit",
        "--config",
        str(REPO / "conf/resnet34_patch/idrid.yaml"),
        "--model.weights=imagenet",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--data.root={tmp_path}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "timm/resnet34.a1_in1k" in err and "Traceback" not in err


def test_a_local_file_still_loads_as_pretrained_path(tmp_path):
    import timm

    torch.manual_seed(5)
    net = timm.create_model("resnet18", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    model = create_timm_model("resnet18", str(tmp_path / "w.pth"), num_classes=3)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], net.state_dict()["layer1.0.conv1.weight"])


def test_weights_fetch_lists_a_configs_ids_and_downloads_through_the_hub_client(tmp_path, monkeypatch, capsys):
    """`retinalab weights fetch --config X` asks the hub client for every hub weight the config needs
    (the download replaced at the client's boundary), and prints where they went."""
    import huggingface_hub

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  class_path: retinalab.tasks.PatchClassifierTask\n  init_args:\n    backbone: resnet34\n    weights: "
        "imagenet\n"
    )
    assert config_sources(cfg) == [WeightsSource("resnet34", "hub", "timm/resnet34.a1_in1k")]
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "snap" / repo_id)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert main(["weights", "fetch", "--config", str(cfg), "resnet50=hf-hub:timm/resnet50.tv_in1k"]) == 0
    assert [a[0] for a in asked] == ["timm/resnet34.a1_in1k", "timm/resnet50.tv_in1k"] and "*.safetensors" in asked[0][
        1
    ]
    out = capsys.readouterr().out
    assert "timm/resnet34.a1_in1k" in out and str(tmp_path / "snap") in out
    # a config that needs nothing says so
    none = tmp_path / "n.yaml"
    none.write_text("model:\n  init_args:\n    backbone: convnet\n")
    assert main(["weights", "fetch", "--config", str(none)]) == 0
    assert "needs no pretrained weights" in capsys.readouterr().out


def test_weights_list_shows_the_cache(offline_hub, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert HUB_ID in out and REVISION[:12] in out


def test_smp_encoder_weights_for_g_load_from_the_offline_cache(offline_hub, tmp_path):
    """Paper 001's G on an smp encoder (``generator_encoder``) with ``generator_weights: imagenet``:
    smp's pinned hub revision read from the cache, the input normalised with the weights' statistics;
    the Xception U-Net refuses weights (the paper trains it from scratch)."""
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    from retinalab.models.xception_unet import build_generator
    from retinalab.weights import smp_source

    home, _ = offline_hub
    source = smp_source("resnet18", "imagenet")
    repo_id, _, revision = source.location.partition("@")
    assert repo_id == "smp-hub/resnet18.imagenet" and len(revision) == 40
    snapshot = home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    torch.manual_seed(9)
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(snapshot / "model.safetensors"))
    # smp's config.json of the weights carries their preprocessing (as smp-hub's do)
    (snapshot / "config.json").write_text(
        '{"input_space": "RGB", "input_range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}'
    )
    g = build_generator(encoder="resnet18", num_lesions=4, weights="imagenet")
    assert torch.equal(g.encoder.layer1[0].conv1.weight, encoder.layer1[0].conv1.weight)
    assert torch.allclose(g.input_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    with pytest.raises(WeightsNotFoundError, match="smp-hub/resnet34.imagenet"):
        build_generator(encoder="resnet34", weights="imagenet")
    with pytest.raises(ValueError, match="Xception U-Net trains from scratch"):
        build_generator(weights="imagenet")
    # a config's G weights are among what `retinalab weights fetch --config` fetches
    cfg = tmp_path / "g.yaml"
    cfg.write_text(
        "model:\n  init_args:\n    generator_encoder: resnet18\n    generator_weights: imagenet\n    backbone: "
        "resnet18\n"
    )
    assert config_sources(cfg) == [source]
