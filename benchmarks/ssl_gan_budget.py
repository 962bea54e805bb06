"""Paper 000 over the training budget: where the GAN term helps and where it costs (issue 50).

At 276 discriminator steps the SSL-GAN's GAN term cost nothing on ``scarce``; at 1,104 it cost 0.14-0.21
of test image AUROC against the same network with the term switched off (benchmarks/ssl_gan_factors.py).
Paper 000 trains about 100 times longer. This script follows three arms from the start to ``--epochs``
(66 epochs of 92 steps: 6,072 steps), on benchmarks/label_efficiency.py's ``scarce`` data (541
photographs of 768x510, seed 1234; 143 train / 50 val / 100 test) with 10 labelled photographs, on the
same split and labelled images per seed:

* ``SSL-GAN``: conf/ssl_gan/synthetic.yaml as shipped (its learning rate decays linearly over the last
  third of the run, as the shipped schedule does over its own length);
* ``GAN term off``: the same network, optimisers, EMA and schedule with ``--model.unsup_weight 0``;
* ``ConvNet``: conf/convnet/synthetic.yaml at the SSL-GAN's discriminator steps
  (``--data.batches_per_epoch unlabeled``);
* with ``--arms``, remedies for a discriminator that wins, one at a time, each against the SSL-GAN as
  shipped: ``2 G steps`` (``--model.g_steps 2``) and ``instance noise 0.1`` (``--model.instance_noise 0.1``,
  decayed to 0 over the run).

Along each run (:class:`Trajectory`): validation image and patch AUROC every ``--val-every`` epochs,
the GAN's diagnostics of every epoch (D's real-vs-generated accuracy, p(fake) on real and generated
patches, the generator's feature-matching loss) and the seconds each epoch took; the SSL-GAN writes its
generated patches beside real ones every epoch (``runs/<run>/csv/version_0/overlays/gan_samples_epochNNNN.png``).
At each of ``--budgets`` (epochs) the run keeps its weights (``budgets/epochNNN.ckpt``), which are
tested after the fit: the test figures come from the run itself, not from shorter refits.

    python benchmarks/ssl_gan_budget.py [--seeds 0 1] [--epochs 66] [--budgets 3 12 24 48 66] [--val-every 4]
                                        [--work DIR] [--parallel N] [--device cpu|cuda] [--report]

Printed and written to ``<work>/report.md``: test image AUROC per arm and budget (mean over seeds), the
paired gaps at each budget (SSL-GAN - GAN term off: the GAN term's effect; SSL-GAN - ConvNet; GAN term
off - ConvNet) with 95% bootstrap intervals over test photographs, the diagnostics and seconds per step
along the SSL-GAN's trajectory, and ``<work>/trajectory.png`` (validation image AUROC against steps,
one line per arm: the mean over seeds and its range; test image AUROC at the budgets as markers).

Each run appends its line to ``<work>/results.jsonl`` when it is tested; a rerun with the same ``--work``
skips finished runs and continues a killed one from its last epoch (``checkpoints/last.ckpt``), its
trajectory and budget checkpoints kept. ``--parallel N`` runs N fits at a time, each in its own process
with its share of the CPU threads (benchmarks/_fits.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import append_jsonl, machine, read_jsonl  # noqa: E402
from _fits import METRICS, paired_image_auroc, run_children, write_child_line  # noqa: E402

ARMS = {
    "SSL-GAN": ("conf/ssl_gan/synthetic.yaml", []),
    "GAN term off": ("conf/ssl_gan/synthetic.yaml", ["--model.unsup_weight=0"]),
    "ConvNet": ("conf/convnet/synthetic.yaml", ["--data.batches_per_epoch=unlabeled"]),
    # remedies for a discriminator that wins, one at a time (--arms; PatchSSGANTask documents and cites each)
    "2 G steps": ("conf/ssl_gan/synthetic.yaml", ["--model.g_steps=2"]),
    "instance noise 0.1": ("conf/ssl_gan/synthetic.yaml", ["--model.instance_noise=0.1"]),
}
CORE = ("SSL-GAN", "GAN term off", "ConvNet")
TAGS = {
    "SSL-GAN": "sslgan",
    "GAN term off": "sslgan-off",
    "ConvNet": "convnet",
    "2 G steps": "sslgan-g2",
    "instance noise 0.1": "sslgan-noise0.1",
}


def pairs(arms) -> list[tuple[str, str]]:
    """The paired differences the report gives at each budget, (A, B) meaning A - B: the GAN term's effect,
    each SSL-GAN arm against the ConvNet, and each remedy against the SSL-GAN as shipped."""
    out = [("SSL-GAN", "GAN term off"), ("SSL-GAN", "ConvNet"), ("GAN term off", "ConvNet")]
    return [p for p in out if set(p) <= set(arms)] + [(r, "SSL-GAN") for r in arms if r not in CORE]


LABELS = 10
DIAGNOSTICS = ("gan/d_accuracy", "gan/p_fake_real", "gan/p_fake_generated", "gan/loss_g", "gan/loss_sup")


def tag(arm: str, seed: int) -> str:
    return f"{TAGS[arm]}-{seed}"


def make_trajectory(folder: Path, budgets: list[int]):
    """The callback that records a run's trajectory (see the module docstring) and keeps its budget
    checkpoints; it appends to ``folder/trajectory.jsonl``, one line per epoch."""
    import pytorch_lightning as pl

    class Trajectory(pl.Callback):
        def __init__(self) -> None:
            self.path = folder / "trajectory.jsonl"
            self.started = time.perf_counter()
            self.val: dict[str, float] = {}

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.started = time.perf_counter()
            self.batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches += 1

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                m = trainer.callback_metrics
                self.val = {k: float(m[k]) for k in ("val/image_auroc", "val/patch_auroc") if k in m}

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch = trainer.current_epoch + 1  # epochs completed
            seconds = time.perf_counter() - self.started  # over the batches this process ran of the epoch
            row = {
                "epoch": epoch,
                "steps": epoch * trainer.num_training_batches,
                "epoch_s": round(seconds, 2),
                "s_per_step": round(seconds / max(1, self.batches), 4),
                **self.val,
            }
            self.val = {}
            append_jsonl(self.path, row)
            if epoch in budgets:
                (folder / "budgets").mkdir(exist_ok=True)
                trainer.save_checkpoint(folder / "budgets" / f"epoch{epoch:03d}.ckpt", weights_only=False)

    return Trajectory()


def diagnostics_by_epoch(folder: Path) -> dict[int, dict[str, float]]:
    """The GAN's epoch means from the run's metrics.csv (CSVLogger), by epoch completed."""
    import csv

    out: dict[int, dict[str, float]] = {}
    for path in sorted(folder.rglob("metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                values = {k: float(row[k]) for k in DIAGNOSTICS if row.get(k) not in (None, "")}
                if values and row.get("epoch") not in (None, ""):
                    out.setdefault(int(float(row["epoch"])) + 1, {}).update(values)
    return out


def run(arm: str, seed: int, root: Path, work: Path, a: argparse.Namespace) -> dict:
    """Fit one arm to ``a.epochs`` (continuing a killed run), then test its budget checkpoints."""
    from retinalab.experiments.launch import cap_workers, limit_threads
    from retinalab.lightning.cli import cli

    threads = limit_threads()
    name = tag(arm, seed)
    out = work / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the configs' relative checkpoint folder lands in the run's folder
    config, extra = ARMS[arm]
    args = [
        "--config",
        str(REPO / config),
        "--data.root",
        str(root),
        f"--data.num_labeled_images={LABELS}",
        f"--data.seed={seed}",
        f"--seed_everything={seed}",
        f"--trainer.max_epochs={a.epochs}",
        f"--trainer.check_val_every_n_epoch={a.val_every}",
        f"--trainer.default_root_dir={out}",
        "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
        f"--trainer.logger.save_dir={out}",
        "--trainer.logger.name=csv",
        "--trainer.logger.version=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--data.val_size={a.val}",
        f"--data.test_size={a.test}",
        f"--data.split_file={out / 'split.json'}",
        *extra,
    ]
    if "sslgan" in name:
        args.append(f"--model.lr_decay_start={max(1, int(a.epochs * 2 / 3))}")
    if a.device:
        args += [f"--trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}", "--trainer.devices=1"]
    c = cli(args, run=False)
    cap_workers(c.datamodule, threads)
    c.trainer.callbacks.append(make_trajectory(out, a.budgets))
    last = next(iter(sorted(out.glob("runs/*/checkpoints/last*.ckpt"))), None)
    t0 = time.perf_counter()
    c.trainer.fit(c.model, c.datamodule, ckpt_path=str(last) if last else None)
    line: dict = {"arm": arm, "seed": seed, "tag": name, "fit_s": round(time.perf_counter() - t0, 1)}
    line["resumed_from"] = str(last) if last else None
    line["budgets"], preds = {}, {}
    for epoch in a.budgets:
        ckpt = out / "budgets" / f"epoch{epoch:03d}.ckpt"
        res = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path=str(ckpt), verbose=False)[0]
        line["budgets"][str(epoch)] = {m: float(res[f"test/{m}"]) for m in METRICS}
        rec = c.model.eval_records["test"]
        preds[f"e{epoch}_probs"], preds[f"e{epoch}_targets"] = rec["probs"], rec["targets"]
    (work / "predictions").mkdir(exist_ok=True)
    np.savez_compressed(work / "predictions" / f"{name}.npz", **preds)
    line["predictions"] = f"predictions/{name}.npz"
    rows = {r["epoch"]: r for r in read_jsonl(out / "trajectory.jsonl")}  # a resumed epoch: its last row
    diag = diagnostics_by_epoch(out)
    line["trajectory"] = [{**rows[e], **diag.get(e, {})} for e in sorted(rows)]
    line["steps_per_epoch"] = line["trajectory"][-1]["steps"] // line["trajectory"][-1]["epoch"]
    return line


def paired_at(a_lines: list[dict], b_lines: list[dict], epoch: int, work: Path):
    """Test image AUROC of arm A minus arm B at a budget (:func:`_fits.paired_image_auroc` on the budget's
    predictions): the mean difference, its 95% bootstrap interval, the per-seed differences."""
    return paired_image_auroc(
        a_lines, b_lines, work, f"e{epoch}", lambda line: line["budgets"][str(epoch)]["image_auroc"]
    )


def report(done: dict, a: argparse.Namespace, work: Path) -> str:
    """The report (Markdown) of the runs finished so far; draws trajectory.png."""
    arms = getattr(a, "arms", CORE)
    by_arm = {arm: [done[tag(arm, s)] for s in a.seeds if tag(arm, s) in done] for arm in arms}
    spe = next((ln["steps_per_epoch"] for lines in by_arm.values() for ln in lines), 92)
    out = [f"Runs finished: {sum(map(len, by_arm.values()))} of {len(arms) * len(a.seeds)} (seeds {a.seeds}).", ""]
    out += ["Test image AUROC at each budget (mean over seeds; per seed in brackets):", ""]
    out += ["| arm | " + " | ".join(f"{e * spe} steps" for e in a.budgets) + " |"]
    out += ["|---|" + "---|" * len(a.budgets)]
    for arm, lines in by_arm.items():
        cells = []
        for e in a.budgets:
            v = [ln["budgets"][str(e)]["image_auroc"] for ln in lines]
            cells.append(f"{statistics.mean(v):.3f} [{', '.join(f'{x:.3f}' for x in v)}]" if v else "-")
        out.append(f"| {arm} | " + " | ".join(cells) + " |")
    out += ["", "Paired differences of test image AUROC, A - B, on the same test photographs [95% bootstrap]:", ""]
    out += ["| A - B | " + " | ".join(f"{e * spe} steps" for e in a.budgets) + " |", "|---|" + "---|" * len(a.budgets)]
    for x, y in pairs(arms):
        seeds = [s for s in a.seeds if tag(x, s) in done and tag(y, s) in done]
        cells = []
        for e in a.budgets:
            d = (
                paired_at([done[tag(x, s)] for s in seeds], [done[tag(y, s)] for s in seeds], e, work)
                if seeds
                else None
            )
            cells.append(f"{d[0]:+.3f} [{d[1]:+.2f}, {d[2]:+.2f}]" if d else "-")
        out.append(f"| {x} - {y} | " + " | ".join(cells) + " |")
    gan = by_arm["SSL-GAN"]
    if gan:
        out += ["", "Along the SSL-GAN's trajectory (mean over seeds, at each validation):", ""]
        out += ["| steps | val image AUROC | D accuracy | p(fake) real | p(fake) generated | loss_g | s/step |"]
        out += ["|---|---|---|---|---|---|---|"]
        for row in zip(*(ln["trajectory"] for ln in gan), strict=False):
            if "val/image_auroc" not in row[0]:
                continue

            def m(k: str, rows=row) -> str:
                v = [r[k] for r in rows if k in r]
                return f"{statistics.mean(v):.3f}" if v else "-"

            out.append(
                f"| {row[0]['steps']} | {m('val/image_auroc')} | {m('gan/d_accuracy')} | {m('gan/p_fake_real')} | "
                f"{m('gan/p_fake_generated')} | {m('gan/loss_g')} | {m('s_per_step')} |"
            )
    figure(by_arm, a, work, spe)
    return "\n".join(out) + "\n"


def figure(by_arm: dict[str, list[dict]], a: argparse.Namespace, work: Path, spe: int) -> None:
    """trajectory.png: validation image AUROC against steps per arm (mean, range), test AUROC at budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retinalab.utils.io import save_figure_atomic

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple")
    for (arm, lines), colour in zip(by_arm.items(), colours, strict=False):
        if not lines:
            continue
        rows = [[r for r in ln["trajectory"] if "val/image_auroc" in r] for ln in lines]
        n = min(map(len, rows))
        steps = [rows[0][i]["steps"] for i in range(n)]
        vals = np.array([[r[i]["val/image_auroc"] for i in range(n)] for r in rows])
        ax.plot(steps, vals.mean(0), color=colour, label=f"{arm} (validation, {len(lines)} seeds)")
        ax.fill_between(steps, vals.min(0), vals.max(0), color=colour, alpha=0.15)
        test = [statistics.mean(ln["budgets"][str(e)]["image_auroc"] for ln in lines) for e in a.budgets]
        ax.plot([e * spe for e in a.budgets], test, "o", color=colour, mfc="white", label=f"{arm} (test, budgets)")
    ax.set_xlabel("discriminator / classifier optimiser steps")
    ax.set_ylabel("image AUROC")
    ax.set_title("scarce, 10 labelled photographs: AUROC against the training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure_atomic(fig, work / "trajectory.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=list(CORE), help="the three arms, and remedies to try"
    )
    ap.add_argument("--epochs", type=int, default=66, help="epochs of 92 steps each arm trains (66: 6,072 steps)")
    ap.add_argument(
        "--budgets", type=int, nargs="+", default=[3, 12, 24, 48, 66], help="epochs whose weights are tested"
    )
    ap.add_argument("--val-every", type=int, default=4, help="validate every N epochs")
    ap.add_argument("--images", type=int, default=541, help="photographs drawn (as benchmarks/label_efficiency.py)")
    ap.add_argument("--val", type=int, default=50, help="validation photographs (label_efficiency.py's 50)")
    ap.add_argument("--test", type=int, default=100, help="test photographs (label_efficiency.py's 100)")
    ap.add_argument("--work", help="keep data, runs and results here (default: a temporary folder)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--parallel", type=int, default=None, metavar="N", help="N fits at a time, each its own process")
    ap.add_argument("--report", action="store_true", help="report the runs finished in --work so far, fit nothing")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # arm:seed, one fit in this process
    a = ap.parse_args()
    if a.epochs not in a.budgets or any(e > a.epochs or e < 1 for e in a.budgets):
        ap.error(f"--budgets must lie in 1..{a.epochs} and include --epochs")
    work = Path(a.work or tempfile.mkdtemp(prefix="retinalab-budget-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RETINALAB_CACHE", str(work / "cache"))
    root = work / "idrid-scarce-1"  # benchmarks/label_efficiency.py's data folder name for this preset
    if a.one:
        arm, seed = a.one.rsplit(":", 1)
        write_child_line(work, tag(arm, int(seed)), run(arm, int(seed), root, work, a))
        return
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    if not root.exists():
        from retinalab.synthetic import write_synthetic

        write_synthetic(
            "idrid", root, num_images=a.images, seed=1234, size=(768, 510), workers=os.cpu_count() or 1, preset="scarce"
        )
    results = work / "results.jsonl"
    done = {d["tag"]: d for d in read_jsonl(results)}
    todo = [(arm, s) for s in a.seeds for arm in a.arms if tag(arm, s) not in done]

    def record(name: str, line: dict) -> None:
        append_jsonl(results, line)
        done[name] = line
        final = line["budgets"][str(a.epochs)]["image_auroc"]
        print(
            f"[{time.perf_counter() - t0:6.0f}s] {name}: {line['fit_s']:.0f} s, test image AUROC at the end {final:.3f}"
        )

    if not a.report:
        if a.parallel is None:
            for arm, s in todo:
                record(tag(arm, s), run(arm, s, root, work, a))
        elif todo:
            argv = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--epochs", str(a.epochs)]
            argv += ["--budgets", *map(str, a.budgets), "--val-every", str(a.val_every)]
            argv += ["--val", str(a.val), "--test", str(a.test), "--seeds", *map(str, a.seeds), "--arms", *a.arms]
            argv += ["--device", a.device] if a.device else []
            # the SSL-GAN arms first: about three times the ConvNet's time per step
            todo.sort(key=lambda t: t[0] == "ConvNet")
            children = {tag(arm, s): [*argv, "--one", f"{arm}:{s}"] for arm, s in todo}
            run_children(children, work, a.parallel, a.device, record)
    text = f"machine: {machine()}\n\n" + report(done, a, work)
    (work / "report.md").write_text(text)
    print("\n" + text + f"\n(trajectory.png and report.md in {work}; total time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
