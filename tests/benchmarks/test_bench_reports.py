"""The fast parts of paper 000's two benchmarks (issue 29): the verdicts of benchmarks/label_efficiency.py
read from result lines and test predictions (here made up, so that the right answer is known), and
the run plan of benchmarks/ssl_gan_factors.py. The fits themselves are the benchmarks' business."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import numpy as np

from tests.helpers.paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def _lines(work: Path, preset: str, arm: str, n, seeds, quality: float, rng: np.random.Generator) -> dict:
    """Result lines whose saved test predictions separate 40 diseased from 40 healthy photographs
    with the given quality (0.5: chance), on the same photographs for every arm of a seed."""
    out = {}
    for s in seeds:
        targets = np.zeros((80, 4), np.int64)
        targets[:40, 0] = 1
        noise = np.random.default_rng(100 + s).random((80, 4))  # shared by the arms of a seed: paired
        signal = np.r_[np.ones(40), np.zeros(40)][:, None] * (quality - 0.5) * 1.2
        probs = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.05, (80, 4)) + (noise - 0.5) * 2)))
        tag = f"{preset}-{arm}-{n}-{s}".replace(" ", "_").replace(",", "")
        (work / "predictions").mkdir(exist_ok=True)
        np.savez(
            work / "predictions" / f"{tag}.npz",
            best_probs=probs,
            best_targets=targets,
            last_probs=probs,
            last_targets=targets,
        )
        from retinalab.metrics.bootstrap import exact_auroc

        auc = exact_auroc(probs.sum(1), targets.max(1))
        out[(preset, arm, n, s)] = {
            "best": {"image_auroc": auc, "patch_auroc": auc},
            "predictions": f"predictions/{tag}.npz",
        }
    return out


def test_label_efficiency_verdicts_name_the_winner_or_the_miss(tmp_path, capsys):
    le = runpy.run_path(str(REPO / "benchmarks" / "label_efficiency.py"), run_name="bench_reports")
    seeds = [0, 1]
    a = argparse.Namespace(
        presets=["scarce", "benchmark"],
        labels=[10],
        seeds=seeds,
        only=None,
        arms=["SSL-GAN", "FixMatch", "ConvNet, equal epochs", "ConvNet, equal steps"],
    )
    rng = np.random.default_rng(0)

    def finished(fixmatch_quality: float) -> dict:
        f = {}
        for preset in a.presets:
            f |= _lines(tmp_path, preset, le["CEILING"], None, seeds, 1.2, rng)
            f |= _lines(tmp_path, preset, "ConvNet, equal steps", 10, seeds, 0.7, rng)
            f |= _lines(tmp_path, preset, "ConvNet, equal epochs", 10, seeds, 0.6, rng)
            f |= _lines(tmp_path, preset, "SSL-GAN", 10, seeds, 0.6, rng)
            f |= _lines(tmp_path, preset, "FixMatch", 10, seeds, fixmatch_quality, rng)
        return f

    le["verdicts"](a, finished(0.85), tmp_path)
    out = capsys.readouterr().out
    assert "- scarce: supervised ceiling >= 0.92" in out and "-> met" in out
    assert "ConvNet, equal steps at 10 labels in [0.65, 0.78]" in out
    assert "by >= 0.03 at 10 labels with a paired interval above 0: met (FixMatch)" in out
    assert "- benchmark: at 10 labels, SSL-GAN >= ConvNet, equal epochs + 0.05" in out

    le["verdicts"](a, finished(0.7), tmp_path)  # FixMatch no better than the ConvNet now
    out = capsys.readouterr().out
    assert "MISSED: neither does" in out and "ssl_gan_factors.py" in out

    # the mechanism table: each method's own diagnostics, mean over seeds; "-" where a run logged none
    f = finished(0.7)
    for s, acc in zip(seeds, (0.9, 0.8), strict=True):
        f[("scarce", "FixMatch", 10, s)]["diagnostics"] = {
            "fixmatch/pseudo_accuracy": acc,
            "fixmatch/pseudo_lesion_recall": 0.1,
        }
    le["mechanism"]("scarce", a, f)
    out = capsys.readouterr().out
    assert "| labelled | mask rate | pseudo-label accuracy | lesion precision | lesion recall |" in out
    assert (
        "| 10 | - | 0.850 | - | 0.100 | - | - |" in out and "| 10 | - | - | - | - |" in out
    )  # FixMatch's row, SSL-GAN's

    # the calibration runs nothing semi-supervised, and says only what it measured
    a.only, a.arms = "calibration", ["ConvNet, equal steps"]
    le["verdicts"](a, finished(0.85), tmp_path)
    out = capsys.readouterr().out
    assert "semi-supervised" not in out and "in [0.65, 0.78]" in out


def test_ssl_gan_factors_plan_moves_one_factor_at_a_time():
    f = runpy.run_path(str(REPO / "benchmarks" / "ssl_gan_factors.py"), run_name="bench_reports")
    settings = f["settings"]()
    base = f["BASE"]
    assert len(settings) == 7 and settings.count(base) == 1  # 4 weights + 3 widths + 2 step counts, the base shared
    assert all(sum(s[k] != base[k] for k in base) <= 1 for s in settings)
    assert settings[0]["width"] == 0.125 and settings[-1]["width"] == 0.5  # cheapest first
    # the ConvNet counterpart depends on width and steps only: 4 runs per seed, not 7
    assert len({f["tag"]("ConvNet", s, 0) for s in settings}) == 4
    assert len({f["tag"]("SSL-GAN", s, 0) for s in settings}) == 7


def test_ssl_gan_factors_reuses_only_label_efficiencys_base_setting_runs(tmp_path, capsys):
    """--reuse takes label_efficiency.py's SSL-GAN and ConvNet-at-equal-steps runs of the base setting
    (scarce data, 10 labels, 3 epochs, the configs' width) and nothing else, predictions copied."""
    import json

    f = runpy.run_path(str(REPO / "benchmarks" / "ssl_gan_factors.py"), run_name="bench_reports")
    src, work = tmp_path / "le", tmp_path / "factors"
    (src / "predictions").mkdir(parents=True)
    work.mkdir()
    lines = []
    for i, (arm, data, labels, width, seed) in enumerate(
        [
            ("SSL-GAN", "idrid-scarce-1", 10, None, 0),
            ("ConvNet, equal steps", "idrid-scarce-1", 10, None, 0),
            ("ConvNet, equal epochs", "idrid-scarce-1", 10, None, 0),
            ("SSL-GAN", "idrid-benchmark-1", 10, None, 0),
            ("SSL-GAN", "idrid-scarce-1", 40, None, 0),
            ("SSL-GAN", "idrid-scarce-1", 10, 0.25, 0),
            ("SSL-GAN", "idrid-scarce-1", 10, None, 5),
        ]
    ):
        np.savez(src / "predictions" / f"p{i}.npz", best_probs=np.full((2, 4), i, float))
        lines.append(
            {
                "arm": arm,
                "data": data,
                "labels": labels,
                "width": width,
                "seed": seed,
                "epochs": 3,
                "predictions": f"predictions/p{i}.npz",
            }
        )
    (src / "results.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    done: dict = {}
    f["reuse"](src, work, [0, 1, 2], done, work / "results.jsonl")
    base = f["BASE"]
    assert sorted(done) == sorted([f["tag"]("SSL-GAN", base, 0), f["tag"]("ConvNet", base, 0)])
    gan = done[f["tag"]("SSL-GAN", base, 0)]
    assert gan["method"] == "SSL-GAN" and gan["setting"] == base
    assert np.load(work / gan["predictions"])["best_probs"][0, 0] == 0  # the first line's predictions, copied
    assert len((work / "results.jsonl").read_text().splitlines()) == 2
    f["reuse"](src, work, [0, 1, 2], done, work / "results.jsonl")  # a rerun adds nothing
    assert len((work / "results.jsonl").read_text().splitlines()) == 2


def test_ssl_gan_factors_table_reports_finished_settings_and_names_the_missing(tmp_path, capsys):
    f = runpy.run_path(str(REPO / "benchmarks" / "ssl_gan_factors.py"), run_name="bench_reports")
    rng = np.random.default_rng(1)
    (tmp_path / "predictions").mkdir()
    targets = (rng.random((30, 4)) < 0.3).astype(np.int64)
    targets[:2] = [[1, 0, 0, 0], [0, 0, 0, 0]]
    done = {}
    base = f["BASE"]
    for s, quality in ((base, 0.5), ({**base, "unsup_weight": 0.0}, 2.0)):
        for seed in (0, 1):
            for method, q in (("SSL-GAN", quality), ("ConvNet", 1.0)):
                probs = 1 / (1 + np.exp(-(q * (targets - 0.5) + rng.normal(0, 0.5, targets.shape))))
                name = f["tag"](method, s, seed)
                np.savez(tmp_path / "predictions" / f"{name}.npz", best_probs=probs, best_targets=targets)
                done[name] = {
                    "best": {"image_auroc": q / 3, "patch_auroc": q / 4},
                    "steps": 276,
                    "predictions": f"predictions/{name}.npz",
                    "diagnostics": {"gan/d_accuracy": 0.9} if method == "SSL-GAN" else {},
                }
    f["table"](done, [0, 1], tmp_path)
    out = capsys.readouterr().out
    assert (
        "| unsup_weight | 0 | 276 | 0.667 / 0.500 | 0.333 / 0.250 | +0.333 [" in out
    )  # finished: mean over seeds, gap, diagnostics
    assert "| width | 0.5 | not run: 0 of 4 fits finished |" in out
    assert (
        "- unsup_weight: 0.500 (gap from -0.167 to +0.333; smallest deficit at unsup_weight = 0); not run: 0.1, 0.3"
        in out
    )


def test_parallel_children_hand_back_their_lines_and_a_failed_one_is_left_out(tmp_path, capsys):
    """The --parallel protocol both benchmarks share (benchmarks/_fits.py): each child writes its line
    atomically, the parent collects it as the child ends; a child that fails hands back nothing."""
    import sys

    bench = str(REPO / "benchmarks")
    child = (
        "import sys; sys.path.insert(0, {b!r}); from pathlib import Path; from _fits import write_child_line; "
        "write_child_line(Path({w!r}), {n!r}, {{'v': {v}}})"
    )
    children = {
        f"c{i}": [sys.executable, "-c", child.format(b=bench, w=str(tmp_path), n=f"c{i}", v=i)] for i in range(3)
    }
    children["bad"] = [sys.executable, "-c", "raise SystemExit(3)"]
    fits = runpy.run_path(str(REPO / "benchmarks" / "_fits.py"))
    got = {}
    ran = fits["run_children"](children, tmp_path, 2, "cpu", lambda name, line: got.update({name: line}))
    assert {k: v["v"] for k, v in got.items()} == {"c0": 0, "c1": 1, "c2": 2} and all(
        "process_s" in v for v in got.values()
    )
    assert ran["codes"]["bad"] == 3 and len(ran["slots"]) == 2
    assert (tmp_path / "runs" / "c1" / "run.log").exists() and not list((tmp_path / "lines").glob(".*tmp*"))


def test_active_learning_reports_the_grid_pool_at_0_5_and_at_the_validation_threshold(capsys):
    """benchmarks/active_learning.py's tables and verdicts of one setting, on made-up runs: at 0.5 no
    seed of any strategy reaches F 0.8 (a model that calls rare exudates healthy), at the validation
    threshold EGL reaches it at 500 labels and random at 700; each F-measure gets its own verdicts."""
    al = runpy.run_path(str(REPO / "benchmarks" / "active_learning.py"), run_name="bench_reports")
    strategies = ["egl", "entropy", "margin", "bald", "random"]
    a = argparse.Namespace(strategies=strategies, seeds=[0, 1])
    reach = {"egl": 500, "entropy": 600, "margin": 600, "bald": 700, "random": 700}
    labels = [400 + 50 * i for i in range(9)]  # 400 .. 800
    runs = {
        s: [
            [
                {
                    "labels": float(n),
                    "test/f1": 0.5,
                    "test/f1_tuned": 0.85 if n >= reach[s] else 0.6,
                    "select_seconds": 0.1,
                }
                for n in labels
            ]
            for _seed in a.seeds
        ]
        for s in strategies
    }
    timing = {s: 1.0 for s in strategies} | {"inference": 1.0}
    at_half = al["report_metric"](
        a, "grid", "images-selected", runs, len(labels), 50, "test/f1", timing, 1.0, 850.0, ""
    )
    tuned = al["report_metric"](
        a,
        "grid",
        "images-selected",
        runs,
        len(labels),
        50,
        "test/f1_tuned",
        timing,
        1.0,
        850.0,
        " (F-measure at the validation threshold)",
    )
    out = capsys.readouterr().out
    assert (
        "test F-measure after each round" in out
        and "test F-measure at the validation threshold after each round" in out
    )
    assert any("a strategy needs >= 20% fewer labels than random to reach F >= 0.8: MISSED" in v for v in at_half)
    assert all("validation threshold" not in v for v in at_half)
    met = [v for v in tuned if "20% fewer" in v]
    assert met == [
        "- grid / images-selected (F-measure at the validation threshold): a strategy needs >= 20% fewer labels than "
        "random "
        "to reach F >= 0.8: met (egl: 500 vs 700, 29% fewer)"
    ]
    calibration = next(v for v in tuned if "calibration" in v)
    assert "half the label range (600 of 400-800)" in calibration and ": met (random: 700 +- 0)" in calibration


def test_collaborative_report_states_the_oracle_and_premise_verdicts_per_budget(capsys):
    """benchmarks/collaborative.py's report on made-up rows: at budget x1 the oracle is ahead of
    Lesion(Pretrained) by >= 0.02 kappa in 2 of 3 seeds and keeps G's AUC-PR, and the pseudo masks are
    worse than G's while Lesion(Semi) trails (as the premise predicts); at x4 the oracle wins one seed
    only, and the pseudo masks are better while Lesion(Semi) still trails (not as predicted)."""
    from _collab_report import LESIONS, label, report

    seeds = [0, 1, 2]
    a = argparse.Namespace(
        seeds=seeds,
        budgets=[1, 4],
        arms=["Lesion(Pretrained)", "Lesion(Semi)", "Lesion(Semi+Adv)", "Oracle"],
        images=600,
        source_size=[768, 510],
        size=128,
        width=0.25,
        batch_size=8,
        device="cpu",
        precision="32",
        steps_seg=200,
        steps_grading=200,
        joint_batches=40,
        pseudo_warmup=15,
    )
    kappa = {
        ("Ori", 1): 0.70,
        ("Lesion(Pretrained)", 1): 0.80,
        ("Lesion(Semi)", 1): 0.70,
        ("Ori", 4): 0.72,
        ("Lesion(Pretrained)", 4): 0.82,
        ("Lesion(Semi)", 4): 0.75,
        ("Lesion(Semi+Adv)", 1): 0.71,
        ("Lesion(Semi+Adv)", 4): 0.76,
    }
    oracle = {1: [0.03, 0.05, 0.0], 4: [0.03, 0.0, -0.01]}
    pseudo = {1: 0.2, 4: 0.6}
    rows = {}
    for s in seeds:
        rows[(s, "Ori (stage 1b)")] = {"seconds": 1, "metrics": {"test/kappa": 0.6}}
        rows[(s, "G (stage 1a)")] = {
            "seconds": 1,
            "metrics": {"test/mean/auc_pr": 0.5, **{f"test/{les}/auc_pr": 0.5 for les in LESIONS}},
        }
        for b in a.budgets:
            for m in ("Ori", "Lesion(Pretrained)", "Lesion(Semi)", "Lesion(Semi+Adv)"):
                rows[(s, label(m, b))] = {
                    "seconds": 1,
                    "metrics": {
                        "test/kappa": kappa[(m, b)] + 0.001 * s,
                        "test/mean/auc_pr": 0.5,
                        "test/vs_truth/G/mean/auc_pr": 0.4,
                        "test/vs_truth/pseudo/mean/auc_pr": pseudo[b] + 0.01 * s,
                    },
                }
            rows[(s, label("Oracle", b))] = {
                "seconds": 1,
                "metrics": {
                    "test/kappa": kappa[("Lesion(Pretrained)", b)] + 0.001 * s + oracle[b][s],
                    "test/mean/auc_pr": 0.52,
                },
            }
    lesions = {les: {"extent": 3.0, "components": 10, "share": 0.01} for les in LESIONS}
    report(a, rows, lesions, 1.0)
    out = capsys.readouterr().out
    x1, x4 = out.split("- budget x1")[1].split("- budget x4")
    assert "Oracle kappa >= Lesion(Pretrained) + 0.02 in >= 2 of 3 seeds: met" in x1
    assert "Oracle kappa >= Lesion(Pretrained) + 0.02 in >= 2 of 3 seeds: MISSED" in x4
    assert "Oracle keeps G's AUC-PR at or above stage 1a's: met (+0.020" in x1
    assert "pseudo masks better than G's on the graded photographs: no" in x1 and "as the premise predicts" in x1
    assert "pseudo masks better than G's on the graded photographs: yes" in x4 and "NOT as the premise predicts" in x4
    # the full method's pseudo masks are judged as Lesion(Semi)'s
    assert "Lesion(Semi+Adv): pseudo masks better than G's on the graded photographs: no" in x1
    assert "Lesion(Semi+Adv) ahead of Lesion(Pretrained) in kappa: no (-0.090 +- 0.000); as the premise predicts" in x1
    assert "the supervised G (stage 1a) learned MA, HE, EX, SE" in out


def test_report_update_keeps_headings_inside_a_scripts_output_in_its_section():
    """`_report.py --update` splits RESULTS.md at "## " headings outside fenced blocks only: a script whose
    output prints "## Pool: grid" (active_learning.py) keeps it in its own section, in place."""
    import _report

    old = (
        "# Benchmark results\n\nintro\n\n"
        "## A (`benchmarks/alpha.py`)\n\n```\n## Pool: grid\nfigures of alpha\n```\n\n"
        "## B (`benchmarks/beta.py`)\n\n```\nold beta\n```\n"
    )
    new_beta = "## B (`benchmarks/beta.py`)\n\n```\nnew beta\n## Preset 'scarce'\n```\n"
    head, sections = _report._merge(old, [new_beta], [Path("beta.py")], 60.0)
    assert head.startswith("# Benchmark results\n\nintro") and "Sections rerun since: beta" in head
    assert sections == ["## A (`benchmarks/alpha.py`)\n\n```\n## Pool: grid\nfigures of alpha\n```\n", new_beta]


def test_collaborative_parallel_runs_stage_one_first_then_the_longest_units(tmp_path, monkeypatch):
    """benchmarks/collaborative.py --parallel: each seed's stage 1 in a first batch of processes, then
    every stage-2 unit longest first (the 12x budget of an attentive arm before a 1x Ori), each child
    told its unit as JSON after the parent's own arguments; a failed child stops the run with its name."""
    import json

    import collaborative

    import retinalab.experiments.launch as launch

    a = argparse.Namespace(
        seeds=[0, 1],
        budgets=[1, 12],
        arms=["Lesion(Pretrained)", "Lesion(Semi)"],
        work=str(tmp_path),
        parallel=2,
        device="cpu",
    )
    calls = []

    def fake_run_jobs(jobs, slots, on_done=None, prefix=""):
        calls.append([json.loads(j.argv[j.argv.index("--one") + 1]) for j in jobs])
        assert all(j.argv[2:4] == ["--seeds", "0"] for j in jobs) and len(slots) == 2
        return {j.name: int(j.name == "1 Lesion(Semi) 12") for j in jobs}

    monkeypatch.setattr(launch, "run_jobs", fake_run_jobs)
    monkeypatch.setattr(sys, "argv", ["collaborative.py", "--seeds", "0"])
    todo = [u for s in a.seeds for u in collaborative.units(s, a)]
    try:
        collaborative.run_parallel(todo, a, tmp_path / "results.jsonl")
    except SystemExit as e:
        assert "1 runs failed: 1 Lesion(Semi) 12" in str(e)
    else:
        raise AssertionError("a failed child must stop the run")
    stage1, stage2 = calls
    assert sorted(map(tuple, stage1)) == [
        (0, "G (stage 1a)"),
        (0, "Ori (stage 1b)"),
        (1, "G (stage 1a)"),
        (1, "Ori (stage 1b)"),
    ]
    assert len(stage2) == 2 * 2 * 3 and stage2[:2] == [[0, "Lesion(Semi)", 12], [1, "Lesion(Semi)", 12]]
    assert stage2[-2:] == [[0, "Ori", 1], [1, "Ori", 1]]


def test_collaborative_parallel_children_share_their_parents_results_file(monkeypatch):
    """A --parallel child gets its parent's arguments plus --one: both cap the loader workers at a
    process's share of the cores and so compute the same settings key (the results file and the seed
    folders); without --parallel the key is the sequential run's."""
    import collaborative

    monkeypatch.setattr(
        collaborative, "plan_slots", lambda parallel, devices: [argparse.Namespace(threads=1)] * parallel
    )
    parent = collaborative.parse_args(["--parallel", "2", "--seeds", "0"])
    child = collaborative.parse_args(["--parallel", "2", "--seeds", "0", "--one", '[0, "Ori", 1]'])
    assert parent.workers == child.workers == 1
    assert (
        collaborative.settings_key(parent)
        == collaborative.settings_key(child)
        != collaborative.settings_key(collaborative.parse_args([]))
    )
    # G and D's channels-last layout trains to other numbers than the plain one: a key of its own; the plain
    # layout keeps the key its rows were recorded under (2026-12-06: 8b8e7064f9 with --parallel 2 on 2 cores)
    monkeypatch.setattr(collaborative.layout, "ENABLED", True)
    channels_last = collaborative.settings_key(parent)
    monkeypatch.setattr(collaborative.layout, "ENABLED", False)
    assert collaborative.settings_key(parent) != channels_last


def test_collaborative_points_to_rows_recorded_in_the_other_layout(tmp_path, monkeypatch):
    """A work folder whose results were recorded with G and D in the plain layout (every row before
    2026-12-06) shows nothing under the channels-last key; the run says how to read them back."""
    import collaborative

    a = collaborative.parse_args(["--work", str(tmp_path), "--seeds", "0"])
    monkeypatch.setattr(collaborative.layout, "ENABLED", True)
    assert collaborative.layout_hint(a) is None  # nothing recorded in either layout
    monkeypatch.setattr(collaborative.layout, "ENABLED", False)
    plain = tmp_path / f"results-{collaborative.settings_key(a)}.jsonl"
    collaborative.append_jsonl(plain, {"seed": 0, "method": "Ori", "metrics": {"test/kappa": 0.8}})
    assert collaborative.layout_hint(a) is None  # the plain layout's own rows: nothing to point to
    monkeypatch.setattr(collaborative.layout, "ENABLED", True)
    hint = collaborative.layout_hint(a)
    assert hint and str(plain) in hint and "1 results" in hint and "RETINALAB_CHANNELS_LAST=0" in hint
    assert collaborative.layout.ENABLED  # the layout is put back


def test_active_learning_runs_margin_under_algorithm_1_as_entropys_run_and_bald_apart():
    """Under Algorithm 1 with two classes margin labels entropy's patches (test_acquisition.py), so the
    benchmark reports entropy's run for it; under Algorithm 2 (summed scores differ) it runs. BALD, with its
    own initial model, is a job of its own; the rest follow EGL in one job (they need its run)."""
    al = runpy.run_path(str(REPO / "benchmarks" / "active_learning.py"), run_name="bench_reports")
    a = argparse.Namespace(strategies=["egl", "entropy", "margin", "bald", "random"])
    assert al["chains"](a, "patches") == [["egl", "entropy", "random"], ["bald"]]
    assert al["chains"](a, "images-selected") == [["egl", "entropy", "margin", "random"], ["bald"]]
    alone = argparse.Namespace(strategies=["egl", "margin", "random"])
    assert al["chains"](alone, "patches") == [["egl", "margin", "random"]] and al["same_run"](alone, "patches") == {}
    assert al["cost"]("grid", "patches", ["egl", "entropy", "random"]) == 63 + 55 + 55
