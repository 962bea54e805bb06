"""The command-line parser of ``retinalab active`` (also used to rebuild a run from its ``config.yaml``)."""

from __future__ import annotations


def active_parser():
    """``retinalab active``'s parser: ``--config``, ``--resume`` and every field of
    :class:`~retinalab.active.options.RunOptions`, with one-line errors. ``parse_args`` then
    ``instantiate_classes`` gives the keywords of :class:`~retinalab.active.options.RunOptions`."""
    from jsonargparse import ActionConfigFile
    from jsonargparse import ArgumentParser as JsonArgumentParser

    from ..utils.errors import OneLineParserErrors
    from .options import RunOptions

    class Parser(OneLineParserErrors, JsonArgumentParser):
        pass

    p = Parser(prog="retinalab active", description="active learning (paper 002)", default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="YAML config (conf/active/*.yaml)")
    p.add_argument(
        "--resume",
        type=bool,
        default=False,
        help="continue the run in out_dir (after a fault, or once labels.csv is filled in)",
    )
    p.add_class_arguments(RunOptions, None, fail_untyped=True)
    return p
