"""The three plots of `python -m src.compare`, drawn with matplotlib's Agg backend (no display).

Each is written atomically and always: a plot with nothing to show says so in its middle,
so the set of files a comparison leaves is the same whatever the runs hold.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window, also on machines with a display

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from src.compare.runs import Iteration, num  # noqa: E402
from src.core.artifacts import atomic_path  # noqa: E402


def draw_all(
    iterations: list[Iteration], out: Path, metric: str, hparam_metric: str = "eval_win_rate"
) -> list[Path]:
    return [
        save(training_curves(iterations, metric), out / "training_curves.png"),
        save(win_rate_by_iteration(iterations), out / "win_rate_by_iteration.png"),
        save(final_vs_hparams(iterations, hparam_metric), out / "final_vs_hparams.png"),
    ]


def save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)  # the temporary name has no .png to go by
    plt.close(fig)
    return path


LEGEND = "small"  # the legends' font: x-small was unreadable at the PNGs' 100 dpi
DECADES = 2  # a panel whose positive values span more than this many decades gets a log axis


def spread_axis(ax, values: list[float]) -> None:
    """A log y-axis where positive values span orders of magnitude: SPPO's squared error grows
    with eta squared, so at eta = 1000 beside eta = 1 a linear axis flattens the smaller to 0."""
    if values and min(values) > 0 and max(values) / min(values) > 10**DECADES:
        ax.set_yscale("log")


def title_lines(text: str, width_in: float) -> str:
    """`text` wrapped to the figure's width (about 9 characters an inch at the title's size),
    so that a long title is not cut at both ends."""
    return "\n".join(textwrap.wrap(text, max(30, int(9 * width_in))))


def no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)


def curve(history: list[dict], metric: str) -> tuple[list[float], list[float]]:
    points = [(num(e.get("step")), num(e.get(metric))) for e in history]
    points = [(s, v) for s, v in points if s is not None and v is not None]
    return [s for s, _ in points], [v for _, v in points]


def training_curves(iterations: list[Iteration], metric: str):
    # One panel per loss type: SPPO's squared error (~1e3 at eta=1000) and DPO's log-sigmoid
    # (~0.7) on one axis would flatten one of them.
    panels = defaultdict(list)
    for it in iterations:
        steps, values = curve(it.history, metric)
        if steps:
            label = f"{it.lineage} iter{it.row['iter']}"
            panels[str(it.row.get("loss_type"))].append((label, steps, values))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(7 * n, 4.5), squeeze=False)
    for ax, (loss_type, lines) in zip(axes[0], sorted(panels.items()), strict=False):
        for label, steps, values in lines:
            ax.plot(steps, values, marker=".", label=label)
        ax.set(title=f"{metric} ({loss_type} loss)", xlabel="step", ylabel=metric)
        spread_axis(ax, [v for _, _, values in lines for v in values])
        ax.legend(fontsize=LEGEND)
    if not panels:
        no_data(axes[0][0], f"training log with '{metric}'")
    fig.tight_layout()
    return fig


def win_rate_by_iteration(iterations: list[Iteration]):
    # Two panels, two judges: the eval judge's win rate against the reference (what a run is
    # for: it should rise with the iterations) and the training judge's win rate of each
    # pair's chosen response among its K (it falls as the K samples become alike).
    fig, (ev, tr) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    lineages = defaultdict(list)
    for it in iterations:
        lineages[it.lineage].append(it.row)
    # (axes, key, style, name, x offset: the two eval series side by side, their error bars apart)
    series = (
        (ev, "eval_win_rate", "-s", "win rate", -0.03),
        (ev, "eval_lc_win_rate", ":^", "length-controlled", 0.03),
        (tr, "mean_chosen_win_rate", "-o", "chosen", 0.0),
    )
    ev.axhline(0.5, color="grey", linewidth=0.8, linestyle="-", zorder=0)  # parity
    drawn = {ev: False, tr: False}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (lineage, rows) in enumerate(lineages.items()):
        colour = palette[n % len(palette)]  # a lineage keeps its colour in both panels
        for ax, key, style, name, offset in series:
            points = [
                (r["iter"] + offset, r[key], r.get(f"{key}_ci"))
                for r in rows
                if r.get(key) is not None
            ]
            if not points:
                continue
            xs, ys, cis = zip(*points, strict=True)
            # the eval's bootstrap interval as an error bar, where there is one
            err = [[y - ci[0] if ci else 0 for y, ci in zip(ys, cis, strict=True)],
                   [ci[1] - y if ci else 0 for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err if any(cis) else None, fmt=style, color=colour,
                        capsize=3, label=f"{lineage} ({name})")  # fmt: skip
            drawn[ax] = True
    ev.set(title="eval: against the reference, by the eval judge", ylabel="win rate")
    tr.set(title="pairs: chosen among the K samples, by the ranker", ylabel="mean win rate")
    for ax, what in ((ev, "eval win rates"), (tr, "pairs")):
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted({it.row["iter"] for it in iterations}))  # whole numbers
        if drawn[ax]:
            ax.legend(fontsize=LEGEND)
        else:
            no_data(ax, what)
    fig.tight_layout()
    return fig


# eta and lr are swept over decades, so they get a log axis; K is a small integer. beta is
# 1/eta (conf/method), a second panel of the same points.
HPARAM_AXES = (("eta", "log"), ("lr", "log"), ("K", "linear"))


def last_rows(iterations: list[Iteration], key: str) -> list[dict]:
    """Each lineage's last iteration with a number for `key`: where that lineage got to."""
    last: dict[str, dict] = {}
    for it in iterations:
        kept = last.get(it.lineage)
        if num(it.row.get(key)) is not None and (kept is None or it.row["iter"] > kept["iter"]):
            last[it.lineage] = it.row
    return list(last.values())


def final_vs_hparams(iterations: list[Iteration], metric: str = "eval_win_rate"):
    # What a sweep is judged by (its `metric:`), not the final training loss: that grows with
    # eta squared for SPPO and is another loss for DPO, so across a sweep it ranks nothing. The
    # loss is the fallback only while no run has the metric at all.
    rows, y_key, y_label = last_rows(iterations, metric), metric, metric
    title = f"{metric} at each lineage's last iteration with it"
    if not rows:
        rows, y_key = last_rows(iterations, "train_loss_final"), "train_loss_final"
        y_label = title = f"final train loss (no run has {metric})"
    varying = [
        (x_key, x_scale)
        for x_key, x_scale in HPARAM_AXES
        if len({num(r.get(x_key)) for r in rows} - {None}) > 1
    ]
    panels = varying or list(HPARAM_AXES)  # one point per panel: where the run sits
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.5), squeeze=False)
    for (x_key, x_scale), ax in zip(panels, axes[0], strict=True):
        by_method = defaultdict(list)
        for r in rows:
            x = num(r.get(x_key))
            if x is not None and (x > 0 or x_scale == "linear"):
                by_method[r["method"]].append((x, num(r[y_key]), r.get(f"{y_key}_ci"), r["iter"]))
        for method, points in sorted(by_method.items()):
            xs, ys, cis, ts = zip(*points, strict=True)
            err = [[y - ci[0] if ci else 0 for y, ci in zip(ys, cis, strict=True)],
                   [ci[1] - y if ci else 0 for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err if any(cis) else None, fmt="o", capsize=3, label=method)
            for x, y, t in zip(xs, ys, ts, strict=True):  # lineages may stop at different ones
                ax.annotate(f"iter{t}", (x, y), xytext=(4, 4), textcoords="offset points",
                            fontsize="x-small")  # fmt: skip
        ax.set(xlabel=x_key, ylabel=y_label, xscale=x_scale)
        values = [y for pts in by_method.values() for _, y, _, _ in pts]
        if y_key.startswith("eval_") and "win_rate" in y_key:
            ax.axhline(0.5, color="grey", linewidth=0.8, zorder=0)  # parity with the reference
        # losses of different methods differ by orders of magnitude (see training_curves)
        if y_key == "train_loss_final":
            spread_axis(ax, values)
        if by_method:
            ax.legend(fontsize=LEGEND)
        else:
            no_data(ax, f"run with {x_key}" if rows else "evaluated run or finished training")
    against = (
        "each hyper-parameter that varies" if varying else "the hyper-parameters (none varies)"
    )
    fig.suptitle(title_lines(f"{title}, against {against}", fig.get_figwidth()))
    fig.tight_layout()
    return fig
