"""Pretrained weights for the timm backbones, the way timm gives them to everyone: from the Hugging Face
hub into its standard cache (``$HF_HOME/hub``, ``models--<org>--<name>/snapshots/<rev>/``), read from
there afterwards, offline too (``HF_HUB_OFFLINE=1``).

A backbone's ``weights`` is one of:

* ``None``: from scratch (the papers' default where they train from scratch);
* ``imagenet``: timm's default pretrained tag of the architecture (``resnet18`` ->
  ``timm/resnet18.a1_in1k``);
* ``hf-hub:<org>/<name>``: a hub model id holding weights of the same architecture;
* a local file (a timm/torchvision ``state_dict`` saved with ``torch.save``, or ``.safetensors``):
  what ``pretrained_path`` has always meant.

Weights missing from the cache where the hub cannot be reached stop with one line naming the model id,
the cache folder and the command that fetches them (``retinalab weights fetch``), never a traceback
from inside the hub client. The input normalisation follows the weights' ``pretrained_cfg`` (mean and
std), applied inside the network (:func:`normalise_inputs`), so the data pipeline is the same for
every backbone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils.errors import ConfigError, InputMissingError, UserError

IMAGENET = "imagenet"
HUB_PREFIX = "hf-hub:"
#: ImageNet's channel statistics: what weights without their own say were trained with
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights that are neither in the Hugging Face cache nor reachable."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from: ``kind`` is ``hub`` (``location`` a model id) or ``file``."""

    arch: str
    kind: str
    location: str


def cache_dir() -> Path:
    """The hub cache the downloads go to and offline loads read (``HF_HUB_CACHE``, ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve(arch: str, weights: str | None) -> WeightsSource | None:
    """``weights`` of a timm ``arch`` as a :class:`WeightsSource` (``None``: from scratch).

    Raises:
        ConfigError: ``imagenet`` for an architecture timm has no pretrained tag for.
        InputMissingError: a local path that does not exist.
    """
    if weights is None or weights == "":
        return None
    if weights == IMAGENET:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            raise ConfigError(
                f"weights: imagenet: timm has no pretrained weights on the hub for {arch!r}; use a local file or "
                "hf-hub:<id>"
            )
        return WeightsSource(arch, "hub", hub_id)
    if weights.startswith(HUB_PREFIX):
        return WeightsSource(arch, "hub", weights[len(HUB_PREFIX) :])
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputMissingError(
            f"weights={str(path)!r} does not exist: give a local weight file, imagenet, hf-hub:<org>/<name>, or null "
            "(from scratch)"
        )
    return WeightsSource(arch, "file", str(path))


def fetch_command(sources: Iterable[WeightsSource]) -> str:
    return "retinalab weights fetch " + " ".join(f"{s.arch}={HUB_PREFIX}{s.location}" for s in sources)


def create_timm_model(arch: str, weights: str | None, normalise: bool = True, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with ``weights`` (see the module's docstring); the
    classifier is replaced for ``num_classes`` as timm does, and inputs in [0, 1] are normalised with
    the weights' mean and std (:func:`normalise_inputs`) unless ``normalise=False``.

    Raises:
        WeightsNotFoundError: hub weights not in the cache and not reachable (offline, no network).
        ConfigError: see :func:`resolve`.
    """
    import timm

    source = resolve(arch, weights)
    if source is None:
        return timm.create_model(arch, pretrained=False, **kwargs)
    overlay = {"file": source.location} if source.kind == "file" else {"hf_hub_id": source.location}
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # noqa: BLE001 - the hub client's errors are many; the missing-weights ones are named below
        if source.kind != "hub" or not _is_unreachable(e):
            raise
        raise _missing(source, e) from e
    if normalise:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        normalise_inputs(model, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    return model


def _why_unreachable() -> str:
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached"


def _is_unreachable(e: BaseException) -> bool:
    """The hub client's ways of saying "not cached and not downloadable"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        if type(cur).__module__.startswith(("requests", "httpx", "urllib3")):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _normalise(module: nn.Module, args: tuple) -> tuple:
    return ((args[0] - module.input_mean) / module.input_std, *args[1:])


def normalise_inputs(model: nn.Module, mean: Iterable[float], std: Iterable[float]) -> nn.Module:
    """Normalise ``model``'s input with the weights' ``mean`` / ``std`` before its first layer (a forward
    pre-hook and two non-persistent buffers: the ``state_dict`` keeps timm's names)."""
    model.register_buffer(
        "input_mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False
    )
    model.register_buffer(
        "input_std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False
    )
    model.register_forward_pre_hook(_normalise)
    return model


# ------------------------------------------------------------------ what a config needs, fetching, listing
#: (path in a config's model init_args, the architecture's key beside it) for every pretrained-capable backbone
BACKBONE_KEYS = (("weights", "backbone"), ("pretrained_path", "backbone"))


def config_sources(config: str | Path) -> list[WeightsSource]:
    """The hub weights a ``retinalab fit`` config (or a collaborative stage) needs: its model's
    ``weights`` (or ``pretrained_path``) with the backbone beside it."""
    import yaml

    path = Path(config)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    init = ((cfg.get("model") or {}).get("init_args") or {}) if isinstance(cfg, dict) else {}
    out = []
    if init.get("generator_weights") and init.get("generator_encoder"):
        out.append(smp_source(init["generator_encoder"], init["generator_weights"]))
    for key, arch_key in BACKBONE_KEYS:
        value = init.get(key)
        if value:
            arch = init.get(arch_key) or "resnet18"
            source = resolve(arch, value) if (value == IMAGENET or str(value).startswith(HUB_PREFIX)) else None
            if source is not None:
                out.append(source)
    return out


def parse_name(text: str) -> WeightsSource:
    """``resnet18`` (its imagenet weights), ``resnet18=hf-hub:<id>`` or ``resnet18=imagenet``."""
    arch, _, weights = text.partition("=")
    source = resolve(arch, weights or IMAGENET)
    if source is None or source.kind != "hub":
        raise ConfigError(f"{text!r}: name an architecture (resnet18) or arch=hf-hub:<org>/<name>")
    return source


def fetch(sources: Iterable[WeightsSource]) -> list[Path]:
    """Download the weights of ``sources`` into the hub cache (what :func:`create_timm_model` reads),
    returning each snapshot folder."""
    from huggingface_hub import snapshot_download

    folders = []
    for s in dict.fromkeys(sources):
        try:
            repo_id, _, revision = s.location.partition("@")
            folder = snapshot_download(
                repo_id=repo_id, revision=revision or None, allow_patterns=["*.safetensors", "*.json"]
            )
        except Exception as e:  # noqa: BLE001 - named below when the hub is out of reach; anything else keeps its traceback
            if not _is_unreachable(e):
                raise
            raise WeightsNotFoundError(
                f"cannot fetch {s.location!r}: {_why_unreachable()} ({type(e).__name__}). Run `retinalab weights "
                "fetch` "
                f"where there is internet (a cluster's login node), with HF_HOME pointing at {cache_dir().parent}"
            ) from e
        folders.append(Path(folder))
    return folders


def cached() -> list[tuple[str, int, str]]:
    """``(model id, size in bytes, revision)`` of every model in the hub cache."""
    from huggingface_hub import scan_cache_dir

    root = cache_dir()
    if not root.is_dir():
        return []
    info = scan_cache_dir(root)
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        revs = sorted(repo.revisions, key=lambda r: r.last_modified)
        rows.append((repo.repo_id, repo.size_on_disk, revs[-1].commit_hash[:12] if revs else ""))
    return rows


# ---------------------------------------------------- segmentation-models-pytorch encoders (paper 001's G)
def smp_source(encoder: str, weights: str) -> WeightsSource:
    """The hub repository (``smp-hub/<encoder>.<weights>`` at smp's pinned revision) of an smp encoder's
    pretrained ``weights``; ``tu-`` encoders are timm's (:func:`resolve`)."""
    if encoder.startswith("tu-"):
        source = resolve(encoder[3:], weights)
        assert source is not None
        return source
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {})
    if weights not in settings:
        raise ConfigError(
            f"generator_weights={weights!r} are not weights of smp's {encoder!r} encoder; its weights are "
            f"{sorted(settings) or 'none'}"
        )
    s = settings[weights]
    return WeightsSource(encoder, "hub", f"{s['repo_id']}@{s['revision']}" if s.get("revision") else s["repo_id"])


def smp_unet(encoder: str, weights: str | None, classes: int) -> nn.Module:
    """``smp.Unet`` on ``encoder`` with its pretrained ``weights`` (or from scratch), its input
    normalised with the weights' mean and std; missing weights offline are a :class:`WeightsNotFoundError`.

    Raises:
        ValueError: an encoder smp does not know.
    """
    import segmentation_models_pytorch as smp

    source = smp_source(encoder, weights) if weights else None
    try:
        net = smp.Unet(encoder_name=encoder, encoder_weights=weights, in_channels=3, classes=classes)
    except Exception as e:  # noqa: BLE001 - the hub client's errors are many; the missing-weights ones are named
        if source is not None and _is_unreachable(e):
            raise _missing(source, e) from e
        if isinstance(e, (KeyError, ValueError, RuntimeError)):
            raise ConfigError(
                f"unknown generator encoder {encoder!r} ({e}); see "
                "segmentation_models_pytorch.encoders.get_encoder_names() or use 'tu-<timm name>'"
            ) from e
        raise
    if weights:
        from segmentation_models_pytorch.encoders import get_preprocessing_params

        params = get_preprocessing_params(encoder, pretrained=weights)
        normalise_inputs(net, params.get("mean") or IMAGENET_MEAN, params.get("std") or IMAGENET_STD)
    return net


def _missing(source: WeightsSource, e: BaseException) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"pretrained weights {source.location!r} for {source.arch} are not in the Hugging Face cache {cache_dir()} and "
        f"{_why_unreachable()} "
        f"({type(e).__name__}). Fetch them where there is internet (a cluster's login node): "
        f"`{fetch_command([source])}` "
        "with the same HF_HOME, or use weights: null to train from scratch"
    )
