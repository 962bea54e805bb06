"""The tables and verdicts of ``benchmarks/active_learning.py`` for one pool and setting (not a benchmark:
``make bench`` skips files starting with _)."""

from __future__ import annotations

import math

import numpy as np

TARGETS = (0.8, 0.9)
#: the F-measures a run logs: at 0.5 (paper 002), and at the threshold chosen on the validation patches
KEYS = {"test/f1": "F-measure", "test/f1_tuned": "F-measure at the validation threshold"}


def labels_to_reach(rows: list[dict], target: float, key: str = "test/f1") -> float:
    """Labels in use at the first round whose ``key`` is >= ``target`` (NaN: never within the budget)."""
    return next((float(r["labels"]) for r in rows if r[key] >= target), math.nan)


def fmt(values: list[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "not reached"
    miss = len(values) - len(v)
    return f"{np.mean(v):.0f} +- {np.std(v):.0f}" + (f" ({miss}/{len(values)} not reached)" if miss else "")


def compare(
    name: str, need: list[float], need_rnd: list[float], auc: list[float], auc_rnd: list[float], budget: float
) -> str:
    """``name`` against random: labels to the target (mean over seeds), ahead or behind when the gap is
    larger than the seed spread (the larger standard deviation). A seed that never reaches the target
    within the budget counts as ``budget`` (the labels of one more round: a lower bound, so the gap is
    then a lower bound too, marked >=); the areas under the curves are given beside."""

    def censored(v):
        return [budget if math.isnan(x) else x for x in v], sum(math.isnan(x) for x in v)

    (a, miss_a), (b, miss_b) = censored(need), censored(need_rnd)
    m, r = float(np.mean(a)), float(np.mean(b))
    spread = max(float(np.std(a)), float(np.std(b)))
    word = "ahead of" if r - m > spread else "behind" if m - r > spread else "level with"
    mark = lambda n: ">=" if n else ""  # noqa: E731
    missed = (
        f"; not reached on {miss_a} (random {miss_b}) of {len(a)} seeds, counted as {budget:.0f}"
        if miss_a or miss_b
        else ""
    )
    return (
        f"{word} random: {mark(miss_a)}{m:.0f} vs {mark(miss_b)}{r:.0f} labels ({(r - m) / r:+.0%} fewer), seed spread "
        f"{spread:.0f}{missed}; "
        f"area {float(np.mean(auc)) - float(np.mean(auc_rnd)):+.3f}"
    )


def report_metric(
    a, pool: str, setting: str, runs: dict, n: int, k: int, key: str, timing: dict, ref: float, budget: float, tag: str
) -> list[str]:
    """The per-round table, the summary per strategy and the verdicts of one setting on one F-measure
    (``key``: ``test/f1`` at 0.5 or ``test/f1_tuned``); prints the tables, returns the verdict lines."""
    from retinalab.active.state import area_under

    verdicts = []
    print(
        f"\ntest {KEYS[key]} after each round, mean +- std over {len(a.seeds)} seeds (labels: mean over seeds, equal "
        "for every strategy)\n"
    )
    print("| round | labels | " + " | ".join(a.strategies) + " |")
    print("|---|---|" + "---|" * len(a.strategies))
    for i in range(n):
        labels = [r[i]["labels"] for r in runs["egl"]]
        cells = [
            f"{np.mean([r[i][key] for r in runs[s]]):.3f} +- {np.std([r[i][key] for r in runs[s]]):.3f}"
            for s in a.strategies
        ]
        print(f"| {i} | {np.mean(labels):.0f} | " + " | ".join(cells) + " |")
    stats = {}
    for s in a.strategies:
        rows = [r[:n] for r in runs[s]]
        sel = [x["select_seconds"] for r in rows for x in r[1:] if not math.isnan(x.get("select_seconds", math.nan))]
        stats[s] = dict(
            auc=[area_under(r, key) for r in rows],
            need={t: [labels_to_reach(r, t, key) for r in rows] for t in TARGETS},
            select=float(np.mean(sel)) if sel else math.nan,
        )
    print(
        f"\none inference pass over the patches scored per round: {ref * 1000:.0f} ms; each strategy's scoring timed "
        "beside it "
        f"(the last column but one); in the loop a round's selection took on average "
        + ", ".join(f"{s} {stats[s]['select']:.2f} s" for s in a.strategies)
        + "\n"
    )
    print(
        "| strategy | area under F vs labels | labels to F >= 0.8 | labels to F >= 0.9 | scoring time / inference pass "
        "| against random (F >= 0.8) |"
    )
    print("|---|---|---|---|---|---|")
    rnd = stats["random"]
    for s in a.strategies:
        st = stats[s]
        against = "" if s == "random" else compare(s, st["need"][0.8], rnd["need"][0.8], st["auc"], rnd["auc"], budget)
        print(
            f"| {s} | {np.mean(st['auc']):.3f} +- {np.std(st['auc']):.3f} | {fmt(st['need'][0.8])} | "
            f"{fmt(st['need'][0.9])} | "
            f"{timing[s] / ref:.2f}x | {against} |"
        )
    print()
    if pool == "grid":
        r8 = rnd["need"][0.8]
        span = (
            np.mean([r[n - 1]["labels"] for r in runs["random"]]),
            np.mean([r[0]["labels"] for r in runs["random"]]),
        )
        half = span[1] + (span[0] - span[1]) / 2
        cal = "met" if all(math.isnan(x) or x >= half for x in r8) else "MISSED"
        verdicts.append(
            f"- grid / {setting}{tag}: calibration, random needs at least half the label range ({half:.0f} of "
            f"{span[1]:.0f}-{span[0]:.0f}) "
            f"to reach F >= 0.8: {cal} (random: {fmt(r8)})"
        )
        best = []
        for s in a.strategies:
            if s == "random" or any(math.isnan(x) for x in stats[s]["need"][0.8]):
                continue
            m = float(np.mean(stats[s]["need"][0.8]))
            r_m = float(np.mean([x if not math.isnan(x) else span[0] + k for x in r8]))
            best.append((1 - m / r_m, s, m, r_m))
        best.sort(reverse=True)
        if best and best[0][0] >= 0.2:
            verdicts.append(
                f"- grid / {setting}{tag}: a strategy needs >= 20% fewer labels than random to reach F >= 0.8: met "
                f"({best[0][1]}: "
                f"{best[0][2]:.0f} vs {best[0][3]:.0f}, {best[0][0]:.0%} fewer)"
            )
        else:
            what = ", ".join(f"{s} {m:.0f} ({f:+.0%})" for f, s, m, _ in best) or "no strategy reached it on every seed"
            verdicts.append(
                f"- grid / {setting}{tag}: a strategy needs >= 20% fewer labels than random to reach F >= 0.8: MISSED, "
                "none does "
                f"(random {fmt(r8)}; {what})"
            )
    egl = stats["egl"]
    places = []
    for s in a.strategies:
        if s in ("egl", "random"):
            continue
        c = compare("egl", egl["need"][0.8], stats[s]["need"][0.8], egl["auc"], stats[s]["auc"], budget).replace(
            "random", s
        )
        places.append(c)
    verdicts.append(f"- {pool} / {setting}{tag}: EGL is " + "; ".join(places))
    return verdicts
