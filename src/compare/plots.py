"""The three plots of `python -m src.compare`, drawn with matplotlib's Agg backend (no display).

Lineages pooled by seed (`--by seed`) are drawn as one: their means, and their min-max as the
error bars of a figure and the band around a training curve.

Each is written atomically and always: a plot with nothing to show says so in its middle,
so the set of files a comparison leaves is the same whatever the runs hold. A lineage has one
colour of its own in all three and an iteration one marker (in the training curves also a line
style); each figure's one legend, under its panels where it covers no data, says which is which.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, also on machines with a display

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from src.compare.pool import Pooled  # noqa: E402
from src.core.artifacts import atomic_path  # noqa: E402
from src.core.layout import iteration_name  # noqa: E402
from src.stages.report.results import Iteration, num  # noqa: E402


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
# iteration t's line style and marker: the t-th of each, from the first again past the last
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
CURVE_MARKERS = 10  # about as many markers on a training curve: one a step would hide the line


def iteration_style(t: int) -> tuple[str, str]:
    return LINESTYLES[(t - 1) % len(LINESTYLES)], MARKERS[(t - 1) % len(MARKERS)]


def lineage_colours(iterations: list[Iteration]) -> dict[str, Any]:
    """A colour of its own for each lineage, the same in every plot (each is given all the
    iterations): tab10's up to ten lineages; up to twenty, tab20's ten dark ones before its ten
    light ones, so that a light twin of a hue comes in only past ten; beyond, that many evenly
    spaced along turbo."""
    lineages = sorted({it.lineage for it in iterations})
    n = len(lineages)
    if n <= 10:
        palette = list(matplotlib.colormaps["tab10"].colors)
    elif n <= 20:
        pairs = matplotlib.colormaps["tab20"].colors
        palette = [*pairs[0::2], *pairs[1::2]]
    else:
        palette = [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]
    return dict(zip(lineages, palette[:n], strict=True))


def legend_below(fig, colours: dict[str, Any], key: list[tuple[str, dict]]) -> None:
    """The figure's one legend, under its panels (its layout constrained): a line in the colour
    of each lineage drawn (`colours`), then a grey sample of each style (`key`: a label and its
    Line2D keywords). As many columns as the figure's width holds; the figure grows by the
    legend's height, so that the panels keep theirs."""
    handles = [Line2D([], [], color=colour, linewidth=3) for colour in colours.values()]
    handles += [Line2D([], [], color="grey", **style) for _, style in key]
    labels = [*colours, *(label for label, _ in key)]
    renderer = fig.canvas.get_renderer()
    one_column = fig.legend(handles, labels, fontsize=LEGEND)
    column = one_column.get_window_extent(renderer).width
    one_column.remove()
    font_px = FontProperties(size=LEGEND).get_size_in_points() * fig.dpi / 72
    gap = one_column.columnspacing * font_px  # between two columns
    ncols = max(1, min(len(labels), int((fig.bbox.width + gap) // (column + gap))))
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=LEGEND)
    fig.set_figheight(fig.get_figheight() + legend.get_window_extent(renderer).height / fig.dpi)


def iteration_key(ts: set[int], line: bool) -> list[tuple[str, dict]]:
    """The legend's sample of each iteration drawn: its marker, with `line` its line style."""
    key = []
    for t in sorted(ts):
        linestyle, marker = iteration_style(t)
        key.append(
            (iteration_name(t), {"marker": marker, "linestyle": linestyle if line else "none"})
        )
    return key


def shown(colours: dict[str, Any], lineages: set[str]) -> dict[str, Any]:
    """The colours of the lineages a plot draws, in the order of all of them."""
    return {lineage: colour for lineage, colour in colours.items() if lineage in lineages}


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


def error_bars(ys: list[float], cis: list) -> list[list[float]] | None:
    """The bootstrap intervals `cis` around `ys` as error bars, 0 where a point has none; None
    where none has one."""
    if not any(cis):
        return None
    return [[y - ci[0] if ci else 0 for y, ci in zip(ys, cis, strict=True)],
            [ci[1] - y if ci else 0 for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip


def training_curves(iterations: list[Iteration], metric: str):
    # One panel per loss type: SPPO's squared error (~1e3 at eta=1000) and DPO's log-sigmoid
    # (~0.7) on one axis would flatten one of them.
    colours = lineage_colours(iterations)
    panels = defaultdict(list)
    for it in iterations:
        steps, values = curve(it.history, metric)
        if steps:
            panels[str(it.row.get("loss_type"))].append((it, steps, values))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(7 * n, 4.5), squeeze=False, layout="constrained")
    for ax, (loss_type, lines) in zip(axes[0], sorted(panels.items()), strict=False):
        for it, steps, values in lines:
            linestyle, marker = iteration_style(it.row["iter"])
            ax.plot(steps, values, color=colours[it.lineage], linestyle=linestyle, marker=marker,
                    markersize=4, markevery=max(1, len(steps) // CURVE_MARKERS))  # fmt: skip
            if isinstance(it, Pooled) and (band := it.spread.get(metric)):  # the seeds' min-max
                low, high = zip(*(band[s] for s in steps), strict=True)
                ax.fill_between(steps, low, high, color=colours[it.lineage], alpha=0.2, lw=0)
        ax.set(title=f"{metric} ({loss_type} loss)", xlabel="step", ylabel=metric)
        spread_axis(ax, [v for _, _, values in lines for v in values])
    drawn = [it for lines in panels.values() for it, _, _ in lines]
    if drawn:
        legend_below(fig, shown(colours, {it.lineage for it in drawn}),
                     iteration_key({it.row["iter"] for it in drawn}, line=True))  # fmt: skip
    else:
        no_data(axes[0][0], f"training log with '{metric}'")
    return fig


def win_rate_by_iteration(iterations: list[Iteration]):
    # Two panels, two judges: the eval judge's win rate against the reference (what a run is
    # for: it should rise with the iterations) and the training judge's win rate of each
    # pair's chosen response among its K (it falls as the K samples become alike).
    fig, (ev, tr) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]},
                                 layout="constrained")  # fmt: skip
    colours = lineage_colours(iterations)
    lineages = defaultdict(list)
    for it in iterations:
        lineages[it.lineage].append(it.row)
    # (axes, key, line style, hollow markers, name, x offset: the two eval series side by
    # side, their error bars apart); the markers' shapes are the iterations', and hollow ones
    # tell the length-controlled win rate where a lone point has no line to show its style
    series = (
        (ev, "eval_win_rate", "-", False, "win rate (eval)", -0.03),
        (ev, "eval_lc_win_rate", ":", True, "length-controlled (eval)", 0.03),
        (tr, "mean_chosen_win_rate", "--", False, "chosen among the K (pairs)", 0.0),
    )
    ev.axhline(0.5, color="grey", linewidth=0.8, linestyle="-", zorder=0)  # parity
    drawn: dict[str, set] = {"axes": set(), "lineages": set(), "series": set(), "iterations": set()}
    for lineage, rows in lineages.items():
        colour = colours[lineage]
        for ax, key, linestyle, hollow, name, offset in series:
            points = [(r["iter"], r[key], r.get(f"{key}_ci")) for r in rows
                      if r.get(key) is not None]  # fmt: skip
            if not points:
                continue
            ts, ys, cis = zip(*points, strict=True)
            xs = [t + offset for t in ts]
            ax.errorbar(xs, ys, yerr=error_bars(ys, cis), fmt=linestyle, color=colour, capsize=3)
            for x, y, t in zip(xs, ys, ts, strict=True):
                ax.plot(x, y, marker=iteration_style(t)[1], color=colour, linestyle="none",
                        markerfacecolor="none" if hollow else colour)  # fmt: skip
            drawn["axes"].add(ax)
            drawn["lineages"].add(lineage)
            drawn["series"].add(name)
            drawn["iterations"].update(ts)
    ev.set(title="eval: against the reference, by the eval judge", ylabel="win rate")
    tr.set(title="pairs: chosen among the K samples, by the ranker", ylabel="mean win rate")
    for ax, what in ((ev, "eval win rates"), (tr, "pairs")):
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted({it.row["iter"] for it in iterations}))  # whole numbers
        if ax not in drawn["axes"]:
            no_data(ax, what)
    if drawn["lineages"]:
        styles = []
        for _, _, linestyle, hollow, name, _ in series:
            if name in drawn["series"]:
                face = "none" if hollow else "grey"
                styles.append(
                    (name, {"linestyle": linestyle, "marker": "o", "markerfacecolor": face})
                )
        styles += iteration_key(drawn["iterations"], line=False)
        legend_below(fig, shown(colours, drawn["lineages"]), styles)
    return fig


# eta and lr are swept over decades, so they get a log axis; K is a small integer. eta is
# SPPO's and beta DPO's and WPO's (src/stages/report/results.py blanks the other): a panel of its own
# each, so that no method's points sit on another's axis.
HPARAM_AXES = (("eta", "log"), ("beta", "log"), ("lr", "log"), ("K", "linear"))
OWN = {"eta", "beta"}  # each method's own one, which its loss reads


def last_rows(iterations: list[Iteration], key: str) -> list[Iteration]:
    """Each lineage's last iteration with a number for `key`: where that lineage got to."""
    last: dict[str, Iteration] = {}
    for it in iterations:
        kept = last.get(it.lineage)
        if num(it.row.get(key)) is not None and (kept is None or it.row["iter"] > kept.row["iter"]):
            last[it.lineage] = it
    return list(last.values())


def final_vs_hparams(iterations: list[Iteration], metric: str = "eval_win_rate"):
    # What a sweep is judged by (its `metric:`), not the final training loss: that grows with
    # eta squared for SPPO and is another loss for DPO, so across a sweep it ranks nothing. The
    # loss is the fallback only while no run has the metric at all.
    lasts, y_key, y_label = last_rows(iterations, metric), metric, metric
    title = f"{metric} at each lineage's last iteration with it"
    if not lasts:
        lasts, y_key = last_rows(iterations, "train_loss_final"), "train_loss_final"
        y_label = title = f"final train loss (no run has {metric})"
    rows = [it.row for it in lasts]
    values_of = {x_key: {num(r.get(x_key)) for r in rows} - {None} for x_key, _ in HPARAM_AXES}
    present = {x_key for x_key, values in values_of.items() if values}
    varying = {x_key for x_key, values in values_of.items() if len(values) > 1}
    # eta and beta wherever a lineage has one, varying or not, or a lone DPO run beside an eta
    # sweep would be on no panel; where nothing varies, every hyper-parameter the runs have:
    # one point per panel, where they sit
    kept = varying | (present & OWN) if varying else present
    panels = [(x_key, x_scale) for x_key, x_scale in HPARAM_AXES if x_key in kept]
    panels = panels or list(HPARAM_AXES)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.5), squeeze=False,
                             layout="constrained")  # fmt: skip
    colours = lineage_colours(iterations)
    drawn: dict[str, set] = {"lineages": set(), "iterations": set()}
    for (x_key, x_scale), ax in zip(panels, axes[0], strict=True):
        values = []
        for it in lasts:
            x, y, t = num(it.row.get(x_key)), num(it.row[y_key]), it.row["iter"]
            if x is None or (x <= 0 and x_scale == "log"):
                continue
            # lineages may stop at different iterations: each point has its iteration's marker
            bars = error_bars([y], [it.row.get(f"{y_key}_ci")])
            marker, colour = iteration_style(t)[1], colours[it.lineage]
            ax.errorbar([x], [y], yerr=bars, fmt=marker, color=colour, capsize=3)
            values.append(y)
            drawn["lineages"].add(it.lineage)
            drawn["iterations"].add(t)
        ax.set(xlabel=x_key, ylabel=y_label, xscale=x_scale)
        if y_key.startswith("eval_") and "win_rate" in y_key:
            ax.axhline(0.5, color="grey", linewidth=0.8, zorder=0)  # parity with the reference
        # losses of different methods differ by orders of magnitude (see training_curves)
        if y_key == "train_loss_final":
            spread_axis(ax, values)
        if not values:
            no_data(ax, f"run with {x_key}" if lasts else "evaluated run or finished training")
    against = (
        "each method's own eta (SPPO) or beta (DPO, WPO) and each hyper-parameter that varies"
        if varying
        else "the hyper-parameters (none varies)"
    )
    fig.suptitle(title_lines(f"{title}, against {against}", fig.get_figwidth()))
    if drawn["lineages"]:
        legend_below(fig, shown(colours, drawn["lineages"]),
                     iteration_key(drawn["iterations"], line=False))  # fmt: skip
    return fig
