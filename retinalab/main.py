"""The ``retinalab`` command line.

``retinalab {fit,validate,test,predict} --config conf/<method>/<dataset>.yaml [--data.root DIR ...]``
is Lightning's CLI (dotted overrides such as ``--model.lr`` and ``--trainer.max_epochs`` work);
``retinalab synth`` writes a synthetic dataset in a published layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import cli, finish_wandb, parse_size
from .utils.errors import (
    ArgumentParser,
    ConfigError,
    UserError,
    debug_requested,
    format_error,
    user_error,
)

EXTRA_COMMANDS = {
    "synth": "write a synthetic dataset in the layout of idrid, eophtha, eyepacs, messidor or the generic folder",
    "active": "EGL active learning of exudate patches (paper 002): retinalab active --config "
    "conf/active/eophtha_egl.yaml",
    "check-data": "validate a dataset without training: retinalab check-data --dataset folder --root DIR",
    "study": "methods x labelled-image counts x seeds: retinalab study --config conf/studies/<name>.yaml",
    "sweep": "run a W&B sweep file locally (grid / random): retinalab sweep conf/sweeps/<name>.yaml --count N",
    "label": "label an active-learning run's queries in the browser, or through Label Studio files: retinalab label "
    "--run DIR",
    "weights": "fetch pretrained backbone weights into the Hugging Face cache, or list it: retinalab weights fetch "
    "--config X.yaml",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: retinalab <command> [options]

Label-efficient diabetic-retinopathy analysis on colour fundus photographs.

commands:
  fit        train a model:        retinalab fit --config conf/convnet/idrid.yaml --data.root DIR
  validate   run the validation set on a checkpoint (--ckpt_path)
  test       run the test set on a checkpoint (--ckpt_path)
  predict    predict with a checkpoint (--ckpt_path)
  synth      write a synthetic dataset: retinalab synth idrid --out DIR --num-images 60
  active     active learning (paper 002): retinalab active --config conf/active/eophtha_egl.yaml [--resume]
  label      label a human-oracle active-learning run's queries on a local web page (keys 1/0):
             retinalab label --run runs/active/eophtha_human/egl [--export-ls | --import-ls FILE]
  study      label-efficiency study (methods x labelled counts x seeds), resumable:
             retinalab study --config conf/studies/idrid_label_efficiency.yaml [--cell I] [--collect]
  sweep      run a W&B sweep file locally, without a server: retinalab sweep conf/sweeps/x.yaml --count 8
  check-data validate a dataset (decode, masks, duplicates, splits) and draw a contact sheet:
             retinalab check-data --dataset folder --root DIR
  weights    fetch the pretrained weights a config needs into the Hugging Face cache (on a login node
             with internet), or list the cache: retinalab weights fetch --config X.yaml | retinalab weights list

Run `retinalab <command> --help` for the options of one command.
"""


def synth_main(argv: Sequence[str]) -> int:
    """``retinalab synth``: see :func:`retinalab.synthetic.write_synthetic`."""
    from .synthetic import PRESETS, WRITERS, write_synthetic

    p = ArgumentParser(prog="retinalab synth", description=EXTRA_COMMANDS["synth"])
    p.add_argument("dataset", choices=sorted(WRITERS), help="layout to write")
    p.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    p.add_argument("--num-images", type=int, default=60, help="number of photographs (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images (default 0)")
    p.add_argument("--size", type=parse_size, default=(1024, 680), help="WxH of each photograph (default 1024x680)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="classic",
        help="generator settings: classic (default; lesions only in the central 0.88 of the field of view, "
        "so position and brightness hint at them), benchmark (no such shortcut, lesion opacity calibrated "
        "on the supervised ceiling: for comparing methods), collaborative (benchmark in IDRiD's proportions, "
        "pixel-annotated photographs of the graded ones' grade mix: paper 001's benchmark), scarce (benchmark "
        "with several looks per lesion type, look-alikes that are not lesions and varied backgrounds: "
        "the regime where 10 labelled photographs are scarce), easy (large, high-contrast lesions: "
        "learning tests); see docs/synthetic.md",
    )
    p.add_argument("--lesion-scale", type=float, default=1.0, help="multiplies the preset's lesion sizes (default 1)")
    p.add_argument(
        "--lesion-contrast", type=float, default=1.0, help="multiplies the preset's lesion opacity (default 1)"
    )
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (output does not depend on it)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    a = p.parse_args(list(argv))
    out = write_synthetic(
        a.dataset,
        a.out,
        a.num_images,
        a.seed,
        a.size,
        a.lesion_scale,
        a.lesion_contrast,
        a.workers,
        a.overwrite,
        a.preset,
    )
    print(f"wrote a synthetic {a.dataset} dataset of {a.num_images} images ({a.preset} preset) to {out}")
    return 0


def sweep_main(argv: Sequence[str]) -> int:
    """``retinalab sweep``: see :mod:`retinalab.experiments.sweep`. Exit 1 when a run failed."""
    from .experiments.sweep import run_sweep

    p = ArgumentParser(prog="retinalab sweep", description=EXTRA_COMMANDS["sweep"])
    p.add_argument("sweep", help="W&B sweep file (conf/sweeps/*.yaml)")
    p.add_argument("--count", type=int, default=None, help="runs (grid: the first N combinations; random: N draws)")
    p.add_argument("--out", default=None, help="where the runs go (default runs/sweeps/<file stem>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(list(argv))
    out = a.out or str(Path("runs") / "sweeps" / Path(a.sweep).stem)
    rows = run_sweep(a.sweep, out, a.count, a.seed, a.dry_run)
    return 0 if all(r["status"] in ("ok", "dry-run") for r in rows) else 1


def study_main(argv: Sequence[str]) -> int:
    """``retinalab study``: see :mod:`retinalab.experiments.study`. Exit 0 when every cell ran, 1 when some failed."""
    from .experiments.study import (
        Study,
        collect,
        log_summary_to_wandb,
        logs_to_wandb,
        run_study,
        run_study_parallel,
    )

    p = ArgumentParser(prog="retinalab study", description=EXTRA_COMMANDS["study"])
    p.add_argument("--config", required=True, help="study config (conf/studies/*.yaml)")
    p.add_argument(
        "--cell", type=int, default=None, help="run only cell I (0-based; for SLURM arrays: $SLURM_ARRAY_TASK_ID)"
    )
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.add_argument(
        "--collect", action="store_true", help="only aggregate finished cells into results.csv / results.md / plots"
    )
    p.add_argument("--rerun-failed", action="store_true", help="run failed cells again (they are skipped by default)")
    p.add_argument(
        "--write-sweep", metavar="PATH", default=None, help="write a W&B sweep file whose runs are the cells, and exit"
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="run N cells at a time per visible GPU (on the CPU: N in all) as separate processes, each with "
        "its share of the CPU threads; default: one at a time in this process",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="with --parallel: cpu, cuda, auto (default: every visible GPU, else the CPU) or GPU indices such as 0,1",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=os.environ.get("RETINALAB_DEVICE") or None,
        help="run the cell(s) on one CPU or one GPU (set by --parallel for its processes)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for this process (default: $RETINALAB_THREADS, else torch's)",
    )
    p.add_argument("--no-collect", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(list(argv))
    study = Study.load(a.config)
    if a.write_sweep:
        from .experiments.study import write_sweep

        print(f"wrote {write_sweep(study, a.config, a.write_sweep)}")
        return 0
    if a.list:
        for i, cell in enumerate(study.cells()):
            print(f"{i}\t{cell.name}")
        return 0
    if a.parallel is not None and a.cell is not None:
        raise ConfigError("--parallel runs the unfinished cells; --cell runs one: use one of them")
    if not a.collect:
        from .experiments.launch import limit_threads

        threads = limit_threads(a.threads)
        if a.parallel is not None:
            stats = run_study_parallel(study, a.parallel, a.devices, a.rerun_failed)
        else:
            stats = run_study(
                study, a.cell, a.rerun_failed, collect_after=not a.no_collect, device=a.device, threads=threads
            )
        print(
            f"[study {study.name}] {stats['done']} cell(s) run, {stats['failed']} failed, {stats['skipped']} already "
            "done or failed"
        )
        if a.no_collect:
            return 1 if stats["failed"] else 0
    res = collect(study)
    print(
        f"[study {study.name}] {len(res['rows'])}/{len(study.cells())} cells finished -> {study.out_dir / 'results.md'}"
    )
    if (
        a.cell is None and logs_to_wandb(study) and res["rows"]
    ):  # the whole study (or --collect): its table and curves in W&B
        run_dir = log_summary_to_wandb(study)
        print(f"[study {study.name}] W&B summary run (results table, curves against the labelled count): {run_dir}")
    return 1 if res["failed"] else 0


def check_data_main(argv: Sequence[str]) -> int:
    """``retinalab check-data``: see :mod:`retinalab.check`. Exit 0 when clean, 1 with problems, 2 when
    the dataset cannot be read at all."""
    import json

    from .check import check_dataset
    from .datasets import READERS, check_reader_args

    p = ArgumentParser(prog="retinalab check-data", description=EXTRA_COMMANDS["check-data"])
    p.add_argument("--dataset", required=True, choices=READERS.names(), help="layout to read (a registered reader)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument(
        "--reader-args", default="{}", help='reader arguments as JSON, e.g. \'{"subsets": ["segmentation"]}\''
    )
    p.add_argument(
        "--out", default=None, help="where check.json and contact_sheet.png go (default check-data/<dataset>)"
    )
    p.add_argument("--sample", type=int, default=16, help="photographs on the contact sheet (default 16)")
    p.add_argument("--thumb", type=int, default=192, help="side of each contact-sheet tile in px (default 192)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel decoding processes")
    a = p.parse_args(list(argv))
    try:
        reader_args = json.loads(a.reader_args)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f'--reader-args is not JSON ({e}); write it like \'{{"subsets": ["segmentation"]}}\''
        ) from None
    if not isinstance(reader_args, dict):
        raise ConfigError(f"--reader-args must be a JSON object of the reader's options, not {a.reader_args!r}")
    check_reader_args(a.dataset, reader_args, "--reader-args")
    out = Path(a.out) if a.out else Path("check-data") / a.dataset
    try:
        report = check_dataset(a.dataset, a.root, reader_args, out, a.sample, a.thumb, a.workers)
    except UserError as e:  # the layout cannot be read at all: the pointer to check-data would point here
        e.check_data = None
        raise
    print(report.text())
    print(f"report: {out / 'check.json'}; contact sheet: {out / 'contact_sheet.png'}")
    return 0 if report.ok else 1


def active_main(argv: Sequence[str]) -> int:
    """``retinalab active``: see :class:`retinalab.active.ActiveLearning`.

    Returns 0 when the run finished or is waiting for a human oracle's labels, 2 on bad input.
    """
    from .active.command import active_parser
    from .active.loop import ActiveLearning

    p = active_parser()
    p.description = EXTRA_COMMANDS["active"]
    argv = list(argv)
    for i, a in enumerate(argv):  # a bare `--resume` means --resume=true
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].lower() not in ("true", "false")):
            argv[i] = "--resume=true"
    cfg = p.parse_args(argv)
    resume = cfg.pop("resume")
    cfg.pop("config", None)
    init = p.instantiate_classes(cfg)
    loop = ActiveLearning(**init)
    loop.check_out_dir(resume)  # another run's folder is refused before its config.yaml is replaced
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        out = Path(loop.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(p.dump(cfg, skip_none=False))
        from .manifest import manifest, write_manifest

        write_manifest(out / "manifest.json", manifest(loop.config, loop.seed, stage="active"))
    status = loop.run(resume=resume)
    if status == "waiting":
        print(
            f"retinalab active: queries written under {loop.out / 'queries'}; label them in the browser with "
            f"`retinalab label --run {loop.out}`, or fill in labels.csv there and run the same command with --resume",
            file=sys.stderr,
        )
    return 0


def label_main(argv: Sequence[str]) -> int:
    """``retinalab label``: the labelling page of a human-oracle run (:mod:`retinalab.active.label_server`),
    or its Label Studio files (:mod:`retinalab.active.label_studio`)."""
    p = ArgumentParser(prog="retinalab label", description=EXTRA_COMMANDS["label"])
    p.add_argument("--run", required=True, help="the out_dir of a `retinalab active` run with oracle: human")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; any other needs the token printed in the URL)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--export-ls",
        nargs="?",
        const="",
        metavar="FILE",
        help="write the waiting round as Label Studio tasks (default: queries/round_NNN/label_studio/tasks.json) and "
        "exit",
    )
    g.add_argument(
        "--import-ls",
        metavar="FILE",
        help="journal the labels of a Label Studio JSON export for the waiting round and exit",
    )
    p.add_argument(
        "--ls-document-root",
        help="--export-ls: the folder Label Studio serves local files from (default: the run's queries folder)",
    )
    p.add_argument(
        "--ls-url-prefix",
        help="--export-ls: reference the pictures as URLs under this prefix instead of Label Studio local files",
    )
    a = p.parse_args(list(argv))
    run = Path(a.run)
    if a.export_ls is not None:
        from .active.label_studio import export_tasks

        tasks = export_tasks(run, a.export_ls or None, a.ls_document_root, a.ls_url_prefix)
        root = Path(a.ls_document_root or run / "queries").resolve()  # export_tasks' default document root
        print(
            f"{len(json.loads(tasks.read_text()))} Label Studio tasks: {tasks}; labelling interface: "
            f"{tasks.parent / 'label_config.xml'}"
        )
        if not a.ls_url_prefix:
            print(
                "start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, "
                "add that folder as local storage, import the tasks; export as JSON and run: retinalab label --run "
                f"{run} --import-ls FILE"
            )
        return 0
    if a.import_ls:
        from .active.label_studio import import_annotations

        got, open_, _ = import_annotations(run, a.import_ls)
        print(
            f"{got} labels journalled in {run / 'answers.json'}; {open_} queries of the round still without a label"
            + (
                ""
                if open_
                else f"; continue with `retinalab label --run {run}` or `retinalab active --config "
                f"{run / 'config.yaml'} --resume`"
            )
        )
        return 0
    from .active.label_server import serve
    from .active.labelling import LabelSession

    with LabelSession(run) as session:
        try:
            serve(session, a.host, a.port, open_browser=a.open)
        except KeyboardInterrupt:
            pass
        if session.status == "training":
            print(
                "retinalab label: waiting for the round in training to be saved (Ctrl-C again stops it; it is redone "
                "on the next start)",
                file=sys.stderr,
            )
    return 0


def weights_main(argv: Sequence[str]) -> int:
    """``retinalab weights {fetch,list}``: see :mod:`retinalab.weights`."""
    from .weights import cache_dir, cached, config_sources, fetch, parse_name

    p = ArgumentParser(prog="retinalab weights", description=EXTRA_COMMANDS["weights"])
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``retinalab`` command. A problem the user can fix (:class:`retinalab.utils.errors.UserError`)
    is one line on stderr and exit code 2; ``--debug`` or ``RETINALAB_DEBUG=1`` shows its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = debug_requested(argv)
    try:
        return _command(argv)
    except Exception as e:
        found = user_error(e)
        if found is None or debug:
            raise
        print(format_error(found), file=sys.stderr)
        return 2


def _command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0
    if argv[0] == "synth":
        return synth_main(argv[1:])
    if argv[0] == "active":
        return active_main(argv[1:])
    if argv[0] == "check-data":
        return check_data_main(argv[1:])
    if argv[0] == "study":
        return study_main(argv[1:])
    if argv[0] == "sweep":
        return sweep_main(argv[1:])
    if argv[0] == "weights":
        return weights_main(argv[1:])
    if argv[0] == "label":
        return label_main(argv[1:])
    if argv[0] not in LIGHTNING_COMMANDS:
        from .utils.errors import suggest

        known = (*LIGHTNING_COMMANDS, *EXTRA_COMMANDS)
        raise ConfigError(
            f"unknown command {argv[0]!r}; the commands are {', '.join(known)}.{suggest(argv[0], known, prefix='')} "
            "Run `retinalab --help`"
        )
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        finish_wandb(cli(argv).trainer)  # the run's files are complete when the command returns
    except SIGTERMException:  # a SystemExit that Lightning raises with code 0; the run did not finish
        print(f"retinalab {argv[0]}: stopped by SIGTERM (resume with --ckpt_path last)", file=sys.stderr)
        return 128 + 15
    return 0


if __name__ == "__main__":
    sys.exit(main())
