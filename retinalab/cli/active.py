"""``retinalab active``: EGL active learning of exudate patches (paper 002)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = (
    "EGL active learning of exudate patches (paper 002): retinalab active --config conf/active/eophtha_egl.yaml"
)


def main(argv: Sequence[str]) -> int:
    """``retinalab active``: see :class:`retinalab.active.ActiveLearning`.

    Returns 0 when the run finished or is waiting for a human oracle's labels, 2 on bad input.
    """
    from ..active.command import active_parser
    from ..active.loop import ActiveLearning
    from ..active.options import RunOptions
    from ..utils.io import write_text_atomic
    from ..utils.runs import launch_rank, rank0_lock

    p = active_parser()
    p.description = DESCRIPTION
    argv = list(argv)
    for i, a in enumerate(argv):  # a bare `--resume` means --resume=true
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].lower() not in ("true", "false")):
            argv[i] = "--resume=true"
    cfg = p.parse_args(argv)
    resume = cfg.pop("resume")
    cfg.pop("config", None)
    init = p.instantiate_classes(cfg)
    loop = ActiveLearning(RunOptions(**init))
    # one writer per run folder: a second run started on the same out_dir is refused before it writes
    with rank0_lock(loop.out, "retinalab active"):
        loop.check_out_dir(resume)  # another run's folder is refused before its config.yaml is replaced
        if launch_rank() == 0:
            from ..lightning.manifest import manifest, write_manifest

            out = Path(loop.out)
            write_text_atomic(out / "config.yaml", p.dump(cfg, skip_none=False))
            write_manifest(out / "manifest.json", manifest(loop.config, loop.options.seed, stage="active"))
        loop.lock_run = False  # held here
        waiting = []
        loop.on_waiting = waiting.append  # said below, once, with both ways to answer
        status = loop.run(resume=resume)
    if status == "waiting" and waiting:
        pending = waiting[0]
        print(
            f"retinalab active: {pending.count} patches to label in {pending.folder}; label them in the browser with "
            f"`retinalab label --run {loop.out}`, or fill in {pending.folder / 'labels.csv'} and run the same command "
            "with --resume",
            file=sys.stderr,
        )
    return 0
