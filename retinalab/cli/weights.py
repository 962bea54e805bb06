"""``retinalab weights``: fetch pretrained backbone weights into the Hugging Face cache, or list it."""

from __future__ import annotations

from collections.abc import Sequence

from ..utils.errors import ArgumentParser, ConfigError

DESCRIPTION = (
    "fetch pretrained backbone weights into the Hugging Face cache, or list it: retinalab weights fetch --config X.yaml"
)


def main(argv: Sequence[str]) -> int:
    """``retinalab weights {fetch,list}``: see :mod:`retinalab.weights`."""
    from ..weights import cache_dir, cached, config_sources, fetch, parse_name

    p = ArgumentParser(prog="retinalab weights", description=DESCRIPTION)
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser(
        "fetch", help="download the pretrained weights of configs or architectures into the Hugging Face cache"
    )
    f.add_argument(
        "names", nargs="*", help="architectures (resnet18: its imagenet weights) or arch=hf-hub:<org>/<name>"
    )
    f.add_argument(
        "--config",
        action="append",
        default=[],
        help="a retinalab fit config whose backbones' weights to fetch (repeatable)",
    )
    sub.add_parser("list", help="the models in the Hugging Face cache")
    a = p.parse_args(list(argv))
    if a.action == "list":
        rows = cached()
        print(f"Hugging Face cache: {cache_dir()}")
        for repo_id, size, rev in rows:
            print(f"  {repo_id:<40} {size / 2**20:8.1f} MiB  {rev}")
        if not rows:
            print("  (empty)")
        return 0
    sources = [s for c in a.config for s in config_sources(c)] + [parse_name(n) for n in a.names]
    if not sources:
        if a.config:
            print(f"{', '.join(a.config)} needs no pretrained weights (every backbone trains from scratch)")
            return 0
        raise ConfigError(
            "retinalab weights fetch: name a --config or an architecture (resnet18, "
            "resnet50=hf-hub:timm/resnet50.tv_in1k)"
        )
    for source, folder in zip(dict.fromkeys(sources), fetch(sources), strict=True):
        print(f"{source.arch}: {source.location} -> {folder}")
    print(
        f"cache: {cache_dir()} (set HF_HOME to the same folder on the compute nodes; HF_HUB_OFFLINE=1 reads it without "
        "a network)"
    )
    return 0
