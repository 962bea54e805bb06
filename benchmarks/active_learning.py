"""Paper 002's EGL against the strategies researchers compare it with, in two pools, at equal labels, CPU-sized.

Strategies (``acquisition``): ``egl`` (paper 002), ``entropy``, ``margin``, ``bald`` (Monte-Carlo dropout,
``--mc-samples`` passes; its LeNet has dropout 0.5) and ``random``. For every pool, setting and seed the
loop runs EGL first, then each other strategy from the same initial set and model (EGL's, ``initial_from``),
then random selection at the EGL run's label (and image) counts round by round (``match_labels``), so that
every strategy is compared at equal labels; BALD, whose LeNet has dropout, trains its own initial model in a
job of its own. Under Algorithm 1 margin is not run but reported as entropy's run: with two classes both
rank patches by |p - 0.5| (``tests/active/test_acquisition.py``), so they label the same patches (the run of
2026-12-06 ran both: identical on every seed); ``--strategies margin`` without entropy runs it. Pools:

* ``balanced`` (paper 002's setting, the benchmark until now): centred exudate and healthy patches,
  30 of each per photograph, balanced per class; test patches centred and balanced. The generator's
  default look with the lesion contrast lowered to 0.35.
* ``grid``: every grid patch of the training photographs (``pool_kind: grid``), so exudate patches are a
  small minority as on real e-ophtha (the share is printed), on the generator's ``scarce`` preset
  (exudates in several looks per photograph, sizes and contrasts varying, look-alikes that are not
  exudates); tested on every grid patch of the test photographs (``eval_kind: grid``): the F-measure of
  a detector run over whole photographs. Its size and contrast were calibrated on random selection
  only (docs/active_learning.md).

Settings: ``patches`` (Algorithm 1: k patches per round) and ``images-selected`` (Algorithm 2: the
image with the largest summed score, then k of its patches by that score). The initial model is
trained on ``--initial-batches`` batches of 32 patches drawn half per class (``initial_draw:
stratified``) for ``--initial-epochs`` epochs, or on the patches of ``--initial-images`` images (half
with exudates), on their 8 dihedral variants as every later round (``initial_augment``; paper 002's plain
"5 batches of 32 samples" with ``--no-initial-augment``, under which Algorithm 2's initial model on the
grid pool called every test patch healthy on 3 of 5 seeds: docs/active_learning.md).

Printed per pool and setting: round 0 per seed; the test F-measure after every round per strategy (mean
+- std over seeds); per strategy the area under the F-versus-labels curve (normalised by the label
range), the labels to reach F >= 0.8 and >= 0.9, and a verdict against random (fewer labels to F >= 0.8
by a margin larger than the seed spread, else the area); the selection time per round relative to one
inference pass over the patches scored (timed in the worker pool beside the runs, one thread, as each
run; kept in ``<work>/timings.jsonl``). All of it twice: for the F-measure at 0.5 (paper 002's) and at
the threshold with the largest F-measure on the validation patches (``test/f1_tuned``; a LeNet trained
on a few percent of exudates often ranks them well while calling them healthy at 0.5: Algorithm 2's
round 0 on the grid pool). Then the verdict lines of the targets, and per pool and setting a figure of
every strategy's F-measure, sensitivity and specificity against labels, mean +- std over seeds
(``<work>/figure-<pool>-<setting>.png``; the runs draw no plots of their own, ``plot_every: None``). Each
finished run is appended to ``<work>/results.jsonl`` at once; a rerun skips what is there and resumes a run
cut short.

    python benchmarks/active_learning.py [--work /tmp/retinalab-al-bench] [--pools balanced grid] [--parallel 2]
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _active_report import KEYS, report_metric
from _common import (  # benchmarks/ is on sys.path when a script runs
    append_jsonl,
    machine,
    read_jsonl,
)

STRATEGIES = ("egl", "entropy", "margin", "bald", "random")
SETTINGS = {
    "patches": ("Algorithm 1 (k patches by the strategy's score)", dict(select="patches")),
    "images-selected": (
        "Algorithm 2 (the image of largest summed score, then k of its patches)",
        dict(select="images", image_patches="selected_images"),
    ),
    "images-pool": (
        "Algorithm 2, line 10 as all the image's patches + k patches from the pool",
        dict(select="images", image_patches="pool"),
    ),
}
#: per pool: photographs, generator preset, lesion size and opacity factors, pool and test patches
POOLS = {
    # 6 rounds: the initial model already reaches F 0.75-0.96 there (docs/active_learning.md)
    "balanced": dict(
        images=80,
        preset="classic",
        scale=1.0,
        contrast=0.35,
        seed=1234,
        pool_kind="centred",
        eval_kind="centred",
        k=16,
        rounds=6,
        settings=("patches", "images-selected"),
    ),
    # calibrated on random selection only (docs/active_learning.md): random needs most of the 64-704 range to
    # reach F >= 0.8
    "grid": dict(
        images=80,
        preset="scarce",
        scale=2.5,
        contrast=1.5,
        seed=4321,
        pool_kind="grid",
        eval_kind="grid",
        k=32,
        rounds=20,
        settings=("patches", "images-selected"),
    ),
}
#: a run's rough time in seconds on one thread per pool and setting (the run of 2026-12-06: egl, one of the
#: strategies that start from its initial model, bald), to start the longest jobs first
COST = {
    ("grid", "images-selected"): (74, 60, 99),
    ("grid", "patches"): (63, 55, 91),
    ("balanced", "images-selected"): (12, 7, 21),
    ("balanced", "patches"): (11, 7, 12),
    ("grid", "images-pool"): (90, 75, 120),
    ("balanced", "images-pool"): (14, 9, 24),
}
#: strategies not run in a setting, each reported as the run of another that labels the same patches there
SAME_RUN = {"patches": {"margin": "entropy"}}
PATCHES = dict(image_size=512, patch_size=32, exudate_per_image=30, healthy_per_image=30, grid_stride=32, view_size=384)


def make_data(work: Path, pool: str, workers: int) -> Path:
    from retinalab.synthetic import write_synthetic

    p = POOLS[pool]
    root = work / f"e-ophtha-{pool}"
    if not (root / "e_optha_EX").is_dir():
        write_synthetic(
            "eophtha",
            root,
            p["images"],
            p["seed"],
            (768, 510),
            p["scale"],
            p["contrast"],
            workers,
            True,
            preset=p["preset"],
        )
    return root


def cost(pool: str, setting: str, strategies: list[str]) -> float:
    egl, other, bald = COST[pool, setting]
    return sum(egl if s == "egl" else bald if s == "bald" else other for s in strategies)


def same_run(a, setting: str) -> dict[str, str]:
    """The strategies of ``a`` reported as another's run in ``setting`` (that other being run too)."""
    return {s: o for s, o in SAME_RUN.get(setting, {}).items() if s in a.strategies and o in a.strategies}


def chains(a, setting: str) -> list[list[str]]:
    """The runs of one pool, setting and seed as jobs, each run in order by one worker: EGL, the strategies
    that start from its initial model and random at its counts; BALD (its own initial model) apart."""
    run = [s for s in a.strategies if s not in same_run(a, setting)]
    return [c for c in ([s for s in run if s != "bald"], [s for s in run if s == "bald"]) if c]


def run_group(job: dict) -> list[dict]:
    """One pool, setting and seed: the strategies of ``job`` in order (EGL, the others from its initial
    model, random at EGL's counts; or BALD). Returns a result line per strategy (each also appended to
    results.jsonl as it ends)."""
    from retinalab.active import ActiveLearning, ExudatePatchConfig
    from retinalab.active.store import read_metrics

    torch.set_num_threads(job["threads"])
    logging.basicConfig(level=logging.WARNING)
    work, a = Path(job["work"]), job["args"]
    p = POOLS[job["pool"]]
    k, rounds = a["k"] or p["k"], a["rounds"] or p["rounds"]
    folder = work / "runs" / job["tag"] / f"{job['pool']}-k{k}-r{rounds}" / job["setting"] / f"seed{job['seed']}"
    out = []
    for strategy in job["strategies"]:
        key = {k: job[k] for k in ("tag", "pool", "setting", "seed")} | {"strategy": strategy}
        if key in job["done"]:
            continue
        start = time.perf_counter()
        loop = ActiveLearning(
            dataset="eophtha",
            root=job["root"],
            reader_args={"parts": ["EX"]},
            patches=ExudatePatchConfig(**PATCHES),
            out_dir=str(folder / strategy),
            acquisition=strategy,
            match_labels=str(folder / "egl") if strategy == "random" else None,
            **SETTINGS[job["setting"]][1],
            initial_from=str(folder / "egl")
            if strategy not in ("egl", "bald")
            else None,  # round 0 trained once (BALD's LeNet has dropout)
            pool_kind=POOLS[job["pool"]]["pool_kind"],
            eval_kind=POOLS[job["pool"]]["eval_kind"],
            mc_samples=a["mc_samples"],
            k=k,
            initial_batches=a["initial_batches"],
            initial_images=a["initial_images"],
            max_rounds=rounds,
            epochs_per_round=a["epochs_per_round"],
            initial_epochs=a["initial_epochs"],
            initial_augment=a["initial_augment"],
            val_size=0.25,
            test_size=0.25,
            seed=job["seed"],
            cache_dir=str(work / "cache"),
            num_workers=0,
            accelerator="cpu",
            progress=False,
            track_images=0,
            plot_every=None,
        )
        loop.run(resume=True)
        line = key | {"seconds": time.perf_counter() - start, "rows": read_metrics(folder / strategy / "metrics.csv")}
        append_jsonl(work / "results.jsonl", line)
        out.append(line)
        print(
            f"  {job['pool']} {job['setting']} seed {job['seed']} {strategy}: {line['seconds']:.0f} s, final F "
            f"{line['rows'][-1]['test/f1']:.3f}",
            flush=True,
        )
    return out


def first_split(work: Path, root: Path, pool: str, a):
    """The pool's annotated records, its patch cache (built on first use) and the first seed's split."""
    from retinalab.active import ExudatePatchConfig, ExudatePatches
    from retinalab.active.split import split_pool
    from retinalab.datasets import read_dataset

    records = [r for r in read_dataset("eophtha", str(root), parts=["EX"]) if "EX" in r.masks]
    cache = ExudatePatches.build(
        records,
        ExudatePatchConfig(**PATCHES),
        cache_dir=work / "cache",
        num_workers=os.cpu_count() or 1,
        progress=False,
    )
    return (
        records,
        cache,
        split_pool(cache, 0.25, 0.25, a.seeds[0], POOLS[pool]["pool_kind"], 0, POOLS[pool]["eval_kind"]),
    )


def timing_job(job: dict) -> dict:
    """:func:`scoring_seconds` of one pool and setting in a worker (one thread, as the runs beside it),
    appended to ``<work>/timings.jsonl``."""
    torch.set_num_threads(job["threads"])
    a = argparse.Namespace(**job["args"])
    line = job["key"] | {
        "seconds": scoring_seconds(Path(job["work"]), Path(job["root"]), job["pool"], job["setting"], a)
    }
    append_jsonl(Path(job["work"]) / "timings.jsonl", line)
    return line


def timing_key(a, pool: str, setting: str) -> dict:
    return dict(
        pool=pool,
        setting=setting,
        strategies=list(a.strategies),
        mc_samples=a.mc_samples,
        threads=max(1, (os.cpu_count() or 1) // a.parallel),
    )


def stored_timing(work: Path, key: dict) -> dict[str, float] | None:
    """The latest scoring timings in ``<work>/timings.jsonl`` taken under ``key`` (:func:`timing_key`), or None."""
    return next(
        (t["seconds"] for t in reversed(read_jsonl(work / "timings.jsonl")) if {k: t.get(k) for k in key} == key), None
    )


def scoring_seconds(work: Path, root: Path, pool: str, setting: str, a) -> dict[str, float]:
    """Side by side in this process, on the patches a strategy scores in a round (Algorithm 1: the pool of
    the first seed's split; Algorithm 2: the grid of its training photographs), batched as the loop does,
    with the threads one benchmark worker had: one plain inference pass (``inference``) and each
    strategy's scoring (random: its draw), best of 3, on an untrained LeNet (dropout 0.5 for BALD)."""
    from retinalab.active.heuristics import acquisition_scores, predict_probs
    from retinalab.active.selection import select_random
    from retinalab.models.lenet import LeNet

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.parallel))
    _, cache, split = first_split(work, root, pool, a)
    items = (
        split.pool_items
        if SETTINGS[setting][1]["select"] == "patches"
        else np.concatenate([split.grid_of_image[i] for i in split.split["train"]])
    )
    batches = [
        cache.tensor(items[s : s + 256]) for s in range(0, len(items), 256)
    ]  # read once: the timings compare compute
    nets = {d: LeNet(2, PATCHES["patch_size"], 3, dropout=d).to(memory_format=torch.channels_last) for d in (0.0, 0.5)}
    jobs = {
        "inference": lambda: [predict_probs(nets[0.0], x) for x in batches],
        "random": lambda: select_random(len(items), 32, 0),
    }
    for s in a.strategies:
        if s != "random":
            net = nets[0.5 if s == "bald" else 0.0]
            jobs[s] = lambda s=s, net=net: [
                acquisition_scores(net, x, s, "fc", a.mc_samples, i) for i, x in enumerate(batches)
            ]
    out = {}
    for name, job in jobs.items():
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            job()
            best = min(best, time.perf_counter() - t)
        out[name] = best
    return out


def pool_facts(work: Path, root: Path, pool: str, a) -> str:

    records, cache, split = first_split(work, root, pool, a)
    labels = np.asarray(cache.labels)
    share = lambda items: float((labels[items] == 1).mean())  # noqa: E731
    p = POOLS[pool]
    return (
        f"{len(records)} photographs ({p['preset']} preset, lesion size x{p['scale']}, opacity x{p['contrast']}); pool "
        f"{len(split.pool_items)} "
        f"{p['pool_kind']} patches, {share(split.pool_items):.1%} exudate; test {len(split.eval_items['test'])} "
        f"{p['eval_kind']} patches, "
        f"{share(split.eval_items['test']):.1%} exudate (seed {a.seeds[0]}'s split)"
    )


def report(a, work: Path, results: dict, roots: dict) -> None:
    from retinalab.active.plots import plot_curves

    verdicts = []
    for pool in a.pools:
        print(f"## Pool: {pool}\n\n{pool_facts(work, roots[pool], pool, a)}\n")
        k = a.k or POOLS[pool]["k"]
        for setting in settings_of(a, pool):
            runs = {s: [results.get((pool, setting, seed, s)) for seed in a.seeds] for s in a.strategies}
            if any(r is None for v in runs.values() for r in v):
                missing = sum(r is None for v in runs.values() for r in v)
                print(f"### {pool} / {setting}: {missing} runs not finished yet\n")
                continue
            n = min(len(r) for v in runs.values() for r in v)
            print(f"### {pool} / {setting}: {SETTINGS[setting][0]}\n")
            r0 = [r[0] for r in runs["egl"]]
            # the F-measure at 0.5 (paper 002's), and at the threshold chosen on the validation patches where
            # every run logged it (test/f1_tuned: a rare class often ranks well while p(exudate) stays < 0.5)
            keys = [key for key in KEYS if all(key in x for v in runs.values() for r in v for x in r)]
            print(
                "round 0 (the initial model, shared by every strategy but BALD, whose LeNet has dropout), per seed "
                f"{a.seeds}: test F-measure "
                + ", ".join(f"{r['test/f1']:.3f}" for r in r0)
                + "; sensitivity "
                + ", ".join(f"{r['test/sensitivity']:.2f}" for r in r0)
                + "; specificity "
                + ", ".join(f"{r['test/specificity']:.2f}" for r in r0)
                + (
                    "; at the validation threshold: F-measure " + ", ".join(f"{r['test/f1_tuned']:.3f}" for r in r0)
                    if "test/f1_tuned" in keys
                    else ""
                )
            )
            one_class = sum(min(r["test/sensitivity"], r["test/specificity"]) < 0.1 for r in r0)
            for key in keys:
                zero = sum(r[key] <= 0.0 for r in r0)
                verdicts.append(
                    f"- {pool} / {setting}: round 0, no seed at {KEYS[key]} 0: "
                    f"{'met' if not zero else f'MISSED ({zero} of {len(a.seeds)} seeds at 0)'} "
                    f"(min {min(r[key] for r in r0):.3f}, mean {np.mean([r[key] for r in r0]):.3f})"
                    + (
                        "; seeds whose initial model (nearly) predicts one class at 0.5 (sensitivity or specificity < "
                        f"0.1): {one_class} of {len(a.seeds)}"
                        if key == "test/f1"
                        else ""
                    )
                )
            tkey = timing_key(a, pool, setting)  # timed in the worker pool's tail, or here when the runs were not
            timing = stored_timing(work, tkey)
            if timing is None:
                timing = timing_job(
                    dict(
                        work=str(work),
                        root=str(roots[pool]),
                        pool=pool,
                        setting=setting,
                        key=tkey,
                        threads=tkey["threads"],
                        args=dict(vars(a)),
                    )
                )["seconds"]
            aliases = same_run(a, setting)
            if aliases:
                print(
                    "under Algorithm 1 "
                    + ", ".join(
                        f"{s} is {o}'s run (both rank the patches by |p - 0.5| with two classes)"
                        for s, o in aliases.items()
                    )
                    + "; its scoring is timed on its own\n"
                )
            ref = timing["inference"]
            budget = float(np.mean([r[n - 1]["labels"] for r in runs["random"]])) + k  # one round past the last
            for key in keys:
                verdicts += report_metric(
                    a,
                    pool,
                    setting,
                    runs,
                    n,
                    k,
                    key,
                    timing,
                    ref,
                    budget,
                    tag="" if key == "test/f1" else f" ({KEYS[key]})",
                )
            figure = plot_curves(
                {s: [r[:n] for r in runs[s]] for s in a.strategies},
                work / f"figure-{pool}-{setting}.png",
                initial_labels=float(np.mean([r[0]["labels"] for r in runs["random"]])),
            )
            print(
                "figure (test F-measure, sensitivity and specificity against labels, mean +- std over seeds): "
                f"{figure}\n"
            )
    print("### Verdicts\n")
    print("\n".join(verdicts))


def settings_of(a, pool: str) -> list[str]:
    return list(a.settings) if a.settings else list(POOLS[pool]["settings"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/retinalab-al-bench")
    ap.add_argument("--pools", nargs="+", default=list(POOLS), choices=list(POOLS))
    ap.add_argument(
        "--settings",
        nargs="+",
        default=None,
        choices=list(SETTINGS),
        help="default: patches and images-selected on each pool",
    )
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rounds", type=int, default=None, help="default: each pool's (balanced 6, grid 20)")
    ap.add_argument(
        "--k", type=int, default=None, help="patches per round; default: each pool's (balanced 16, grid 32)"
    )
    ap.add_argument(
        "--initial-batches",
        type=int,
        default=2,
        help="Algorithm 1's initial model: batches of 32 patches, half per class",
    )
    ap.add_argument("--initial-images", type=int, default=2, help="Algorithm 2's mu")
    ap.add_argument(
        "--initial-epochs",
        type=int,
        default=10,
        help="passes over the initial set (2 batches on their 8 variants: 160 SGD steps)",
    )
    ap.add_argument(
        "--initial-augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the initial model on the 8 dihedral variants too, as every later round (default; "
        "--no-initial-augment: "
        "paper 002's plain initial batches, under which Algorithm 2's initial model on the grid pool called every test "
        "patch healthy on 3 of 5 seeds)",
    )
    ap.add_argument("--epochs-per-round", type=int, default=1, help="passes over the labelled set per model update")
    ap.add_argument("--mc-samples", type=int, default=10, help="BALD's Monte-Carlo dropout passes")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="processes (one thread each)")
    ap.add_argument("--report", action="store_true", help="print the tables of the runs finished so far and exit")
    a = ap.parse_args()
    for s in ("egl", "random"):
        if s not in a.strategies:
            a.strategies.insert(0 if s == "egl" else len(a.strategies), s)  # the reference and the baseline
    a.strategies = [s for s in STRATEGIES if s in a.strategies]
    logging.basicConfig(level=logging.WARNING)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = (
        f"ib{a.initial_batches}-ii{a.initial_images}-ie{a.initial_epochs}-e{a.epochs_per_round}-mc{a.mc_samples}"
        + (f"-k{a.k}" if a.k else "")
        + (f"-r{a.rounds}" if a.rounds else "")
        + ("-aug" if a.initial_augment else "")
    )
    roots = {pool: make_data(work, pool, os.cpu_count() or 1) for pool in a.pools}
    for pool in a.pools:
        pool_facts(work, roots[pool], pool, a)  # builds the patch cache once, before the workers share it
    key_of = lambda d: tuple(d[k] for k in ("tag", "pool", "setting", "seed", "strategy"))  # noqa: E731
    done = list(
        {key_of(line): line for line in read_jsonl(work / "results.jsonl") if line.get("tag") == tag}.values()
    )  # a rerun's line wins
    keys = [{k: line[k] for k in ("tag", "pool", "setting", "seed", "strategy")} for line in done]
    start = time.perf_counter()
    if not a.report:
        threads = max(1, (os.cpu_count() or 1) // a.parallel)
        jobs = [
            dict(
                work=str(work),
                root=str(roots[pool]),
                tag=tag,
                pool=pool,
                setting=setting,
                seed=seed,
                strategies=chain,
                done=keys,
                threads=threads,
                args=dict(vars(a)),
            )
            for pool in a.pools
            for setting in settings_of(a, pool)
            for seed in a.seeds
            for chain in chains(a, setting)
        ]
        todo = [
            j
            for j in jobs
            if any(
                {"tag": tag, "pool": j["pool"], "setting": j["setting"], "seed": j["seed"], "strategy": s} not in keys
                for s in j["strategies"]
            )
        ]
        todo.sort(
            key=lambda j: -cost(j["pool"], j["setting"], j["strategies"])
        )  # longest first: the last jobs to end are short
        timings = [
            dict(
                work=str(work),
                root=str(roots[pool]),
                pool=pool,
                setting=setting,
                key=timing_key(a, pool, setting),
                threads=threads,
                args=dict(vars(a)),
            )
            for pool in a.pools
            for setting in settings_of(a, pool)
        ]
        timings = [t for t in timings if stored_timing(work, t["key"]) is None]
        print(
            f"{len(todo)} of {len(jobs)} jobs (pool, setting, seed; BALD apart) to run, then {len(timings)} scoring "
            f"timings; {a.parallel} at a time",
            flush=True,
        )
        if a.parallel > 1 and len(todo) + len(timings) > 1:
            with ProcessPoolExecutor(a.parallel, mp_context=multiprocessing.get_context("spawn")) as ex:
                runs = [ex.submit(run_group, j) for j in todo]
                # last, in the tail of the runs: each timed beside a run, as the runs are beside each other
                timers = [ex.submit(timing_job, t) for t in timings]
                done += [line for f in runs for line in f.result()]
                for f in timers:
                    f.result()
        else:
            done += [line for j in todo for line in run_group(j)]
    seconds = time.perf_counter() - start
    results = {(d["pool"], d["setting"], d["seed"], d["strategy"]): d["rows"] for d in done}
    for pool in a.pools:
        for setting in settings_of(a, pool):
            for s, other in same_run(a, setting).items():
                results |= {
                    (pool, setting, seed, s): results[pool, setting, seed, other]
                    for seed in a.seeds
                    if (pool, setting, seed, other) in results
                }
    budgets = "; ".join(f"{p}: k={a.k or POOLS[p]['k']}, {a.rounds or POOLS[p]['rounds']} rounds" for p in a.pools)
    print(f"\nmachine: {machine()}")
    print(
        f"LeNet, SGD lr 0.01, batch 32, 8 dihedral variants; initial model: {a.initial_batches} batches of 32 patches "
        "drawn half per class "
        f"(Algorithm 1) or the patches of {a.initial_images} images, half with exudates (Algorithm 2), "
        f"{a.initial_epochs} epochs"
        f"{' on their 8 dihedral variants' if a.initial_augment else ''}; "
        f"per pool {budgets}, "
        f"{a.epochs_per_round} epoch(s) per update; BALD: dropout 0.5, {a.mc_samples} passes;"
    )
    ran = f"{sum(d.get('seconds', 0) for d in done):.0f} s of run time in results.jsonl" + (
        "" if a.report else f", {seconds:.0f} s wall clock for this invocation's runs"
    )
    print(f"random at the EGL run's label and image counts, round by round; seeds {a.seeds}; {ran}\n")
    report(a, work, results, roots)


if __name__ == "__main__":
    main()
