"""Every chart Tollgate writes, drawn with matplotlib (Agg, no display): one module, plain data in.

- `report_chart`: `tollgate report --plot` and `tollgate demo --plot`: each group (model or
  tier) as a labelled point at (cost per 1,000 answered requests, mean quality), the routed
  mix of all of them, and the frontier that mixing the groups at random reaches. With no
  quality scores at all it charts cost only and says why on the chart.
- `router_curve_chart`: `tollgate router eval --models ...`: the routed quality-cost curve,
  the single models as labelled points and their random-mix frontier.
- `two_model_chart`: `tollgate router eval --strong A --weak B`: quality against the share of
  calls sent to the strong model, with the random-routing baseline (the straight line between
  the two models) and the two models as labelled points.
- `bench_chart`: `tollgate bench-model --plot`: throughput and latency against concurrency,
  one colour per measured endpoint.

Each function writes a PNG to `path` and returns the matplotlib Figure (tests inspect it).
`mix_frontier` needs no matplotlib. matplotlib is the optional extra `plot`
(`pip install 'tollgate[plot]'`); without it the chart functions raise PlotUnavailable, whose
message says how to install it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_HINT = (
    "charts need matplotlib, which is not installed; install it with "
    "pip install 'tollgate[plot]' (in a source checkout: pip install -e '.[plot]')"
)

# Colours that stay apart for colour-blind readers (Okabe-Ito), and one ink colour.
INK = "#1d2330"
MUTED = "#6b7385"
ROUTED = "#d55e00"
SINGLE = "#0072b2"
FRONTIER = "#7f7f7f"
ORACLE = "#009e73"

CostQuality = tuple[float, float]
Named = tuple[str, float, float]


class PlotUnavailable(RuntimeError):
    """matplotlib is missing; str(e) says how to install it."""


def require() -> None:
    """Raise PlotUnavailable (saying how to install matplotlib) unless charts can be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(PLOT_HINT) from None


def _figure(width: float = 9.0, height: float = 6.0) -> tuple[Figure, Axes]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(PLOT_HINT) from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # draw off-screen into a bitmap; never touches a display
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, color="#e3e6ec", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def mix_frontier(points: Sequence[CostQuality]) -> list[CostQuality]:
    """The best quality reachable at each cost by sending each request to one of `points`
    (single models, as (cost, quality)) chosen at random in fixed proportions.

    A random mix of two models lands on the straight line between them, so the reachable
    frontier is the upper convex hull of the points, from the cheapest one to the cheapest
    among those of the best quality (a mix with a dearer, worse model never helps).
    Returned in order of increasing cost; a single point when only one model counts.
    """
    best_at: dict[float, float] = {}
    for c, q in points:
        best_at[float(c)] = max(float(q), best_at.get(float(c), float("-inf")))
    pts = sorted(best_at.items())
    hull: list[CostQuality] = []
    for p in pts:
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord from hull[-2] to p
            if (x1 - x0) * (p[1] - y0) - (y1 - y0) * (p[0] - x0) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -i)) if hull else -1
    return hull[: top + 1]


# Where a label may go around its point: offsets in points, nearest first, then farther ones
# (drawn with a leader line).
_NEAR = [(8, 6), (8, -14), (-8, 6), (-8, -14), (0, 12), (0, -20)]
_FAR = [(30, 24), (30, -32), (-30, 24), (-30, -32), (0, 36), (0, -44), (48, 0), (-48, 0)]


def _densify(pts: Sequence[tuple[float, float]], step: float = 4.0) -> list[tuple[float, float]]:
    """Points every `step` pixels along the polyline(s) through `pts` (in display pixels), so a
    label is kept off the lines as well as off their vertices. Consecutive points belong to one
    polyline; a jump back in x starts the next (curves are drawn in order of x)."""
    out: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(pts):
        out.append(a)
        if b[0] < a[0]:
            continue
        n = int(max(abs(b[0] - a[0]), abs(b[1] - a[1])) / step)
        out += [(a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n) for k in range(1, n)]
    out += list(pts[-1:])
    return out


def _text_box(ann: Any, renderer: Any) -> Any:
    """Where an annotation's text lands, in pixels (its own extent would include the leader)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def _place_labels(
    fig: Figure,
    ax: Axes,
    labels: Sequence[tuple[float, float, str, dict[str, Any]]],
    obstacles: Sequence[CostQuality] = (),
) -> list[Any]:
    """Annotate each (x, y, text, style) next to its point, where it overlaps the fewest other
    labels, markers and curve points, inside the axes; returns the Annotation objects."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    marks = [to_px((x, y)) for x, y, _, _ in labels]
    lines = _densify([tuple(to_px(p)) for p in obstacles])
    placed: list[Any] = []  # Bbox of each label placed so far
    out = []
    for i, (x, y, text, style) in enumerate(labels):
        best: tuple[float, Any, Any] | None = None
        for k, (dx, dy) in enumerate(_NEAR + _FAR):
            far = k >= len(_NEAR)
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom",
                arrowprops={"arrowstyle": "-", "color": MUTED, "lw": 0.8} if far else None,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                **{"fontsize": 10, "color": INK, **style},
            )
            bb = _text_box(ann, renderer).padded(2)
            score = 0.01 * k + (3.0 if far else 0.0)
            if bb.x0 < frame.x0 or bb.x1 > frame.x1 or bb.y0 < frame.y0 or bb.y1 > frame.y1:
                score += 1000
            score += 100 * sum(bb.overlaps(o) for o in placed)
            score += 30 * sum(
                1
                for j, (mx, my) in enumerate(marks)
                if j != i and bb.x0 - 6 < mx < bb.x1 + 6 and bb.y0 - 6 < my < bb.y1 + 6
            )
            score += 0.1 * sum(1 for lx, ly in lines if bb.x0 < lx < bb.x1 and bb.y0 < ly < bb.y1)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, ann, bb)
            else:
                ann.remove()
            if score < 0.1:
                break
        assert best is not None
        placed.append(best[2])
        out.append(best[1])
    return out


def _limits(ax: Axes, xs: Sequence[float], ys: Sequence[float], *, x0: float | None = None) -> None:
    """Room around the data for the labels (from just left of x0, when given)."""
    lo_x = min(xs) if x0 is None else x0
    hi_x = max(xs)
    span_x = (hi_x - lo_x) or abs(hi_x) or 1.0
    lo_y, hi_y = min(ys), max(ys)
    span_y = (hi_y - lo_y) or abs(hi_y) or 1.0
    ax.set_xlim(lo_x - (0.04 if x0 is not None else 0.12) * span_x, hi_x + 0.18 * span_x)
    ax.set_ylim(lo_y - 0.12 * span_y, hi_y + 0.15 * span_y)


def _finish(fig: Figure, ax: Axes, path: str | Path, *, legend_cols: int = 3) -> Figure:
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # (an empty chart has nothing to name)
        ax.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            ncol=min(legend_cols, len(handles)),
            frameon=False,
            fontsize=10,
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.2, facecolor="white")
    return fig


def _setup(fig: Figure, ax: Axes, title: str, x_label: str, y_label: str) -> None:
    ax.set_title(title, fontsize=13, color=INK, loc="left", pad=12)
    ax.set_xlabel(x_label, fontsize=11, color=INK)
    ax.set_ylabel(y_label, fontsize=11, color=INK)
    ax.tick_params(labelsize=10, colors=INK)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.22)


def router_curve_chart(
    path: str | Path,
    *,
    title: str,
    curve: Sequence[CostQuality],
    singles: Sequence[Named],
    frontier: Sequence[CostQuality] | None = None,
    x_label: str,
    y_label: str,
    curve_label: str = "routed",
) -> Figure:
    """Many models: the routed curve of (cost, quality) points, each single model as a named
    (label, cost, quality) point, and the random-mix frontier (computed from `singles` when
    not given). Writes the PNG to `path`; returns the Figure."""
    fig, ax = _figure()
    _setup(fig, ax, title, x_label, y_label)
    front = (
        list(frontier) if frontier is not None else mix_frontier([(c, q) for _, c, q in singles])
    )
    pts = sorted(curve)
    if len(front) >= 2:
        ax.plot(*zip(*front, strict=True), color=FRONTIER, linestyle="--", linewidth=1.6,
                label="random mix of single models (frontier)", zorder=2)  # fmt: skip
    if pts:
        ax.plot(*zip(*pts, strict=True), color=ROUTED, linewidth=2.0, marker="o", markersize=3,
                label=curve_label, zorder=3)  # fmt: skip
    ax.scatter([c for _, c, _ in singles], [q for _, _, q in singles], s=60, color=SINGLE,
               edgecolor="white", linewidth=1.0, label="single model (always this one)",
               zorder=4)  # fmt: skip
    xs = [c for _, c, _ in singles] + [c for c, _ in pts]
    ys = [q for _, _, q in singles] + [q for _, q in pts]
    _limits(ax, xs or [0.0, 1.0], ys or [0.0, 1.0])
    _place_labels(fig, ax, [(c, q, name, {}) for name, c, q in singles], obstacles=pts + front)
    return _finish(fig, ax, path)


def two_model_chart(
    path: str | Path,
    *,
    title: str,
    curve: Sequence[CostQuality],
    strong: tuple[str, float],
    weak: tuple[str, float],
    oracle: Sequence[CostQuality] | None = None,
    x_label: str = "calls sent to the strong model (%)",
    y_label: str = "quality (mean benchmark score, %)",
    curve_label: str = "routed",
) -> Figure:
    """Two models: quality against the share (0-100 %) of calls sent to `strong`; the routed
    curve of (share, quality) points, the random baseline (a random share of calls to strong
    reaches the straight line from weak to strong), the optional oracle curve, and the two
    models, each (name, quality), as labelled points at 0 % and 100 %."""
    fig, ax = _figure()
    from matplotlib.ticker import PercentFormatter

    _setup(fig, ax, title, x_label, y_label)
    (s_name, s_q), (w_name, w_q) = strong, weak
    ax.plot([0, 100], [w_q, s_q], color=FRONTIER, linestyle="--", linewidth=1.6,
            label="random routing (baseline)", zorder=2)  # fmt: skip
    if oracle:
        ax.plot(*zip(*sorted(oracle), strict=True), color=ORACLE, linestyle=":", linewidth=1.6,
                label="oracle (best possible routing)", zorder=2)  # fmt: skip
    pts = sorted(curve)
    if pts:
        ax.plot(*zip(*pts, strict=True), color=ROUTED, linewidth=2.0, marker="o", markersize=3,
                label=curve_label, zorder=3)  # fmt: skip
    ax.scatter([0, 100], [w_q, s_q], s=60, color=SINGLE, edgecolor="white", linewidth=1.0,
               label="single model (all calls)", zorder=4)  # fmt: skip
    ys = [w_q, s_q] + [q for _, q in pts] + [q for _, q in oracle or []]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or abs(hi) or 1.0
    ax.set_xlim(-12, 112)
    ax.set_ylim(lo - 0.15 * span, hi + 0.15 * span)
    ax.set_xticks(range(0, 101, 20))
    ax.xaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    _place_labels(
        fig,
        ax,
        [(0, w_q, f"{w_name} (weak)", {}), (100, s_q, f"{s_name} (strong)", {})],
        obstacles=[(0.0, w_q), (100.0, s_q), *pts, *sorted(oracle or [])],
    )
    return _finish(fig, ax, path, legend_cols=2)


def report_chart(
    path: str | Path,
    *,
    title: str,
    groups: Sequence[tuple[str, float, float | None]],
    mix: tuple[str, float, float | None] | None = None,
    frontier: bool = True,
    group_noun: str = "model",
    x_label: str = "cost (USD per 1,000 answered requests)",
    y_label: str = "quality (mean score, 0-1)",
    cost_only_title: str | None = None,
) -> Figure:
    """Usage groups as labelled points: each (label, cost, quality or None); `mix` is the routed
    whole. `frontier` draws the random mix of the groups (for groups that are models or tiers).

    Groups without a quality score are named in a note; when none has one, the chart shows
    cost only (bars, titled `cost_only_title`), and says so."""
    fig, ax = _figure()
    scored = [(n, c, q) for n, c, q in groups if q is not None]
    unscored = [n for n, _, q in groups if q is None]
    mix_q = mix is not None and mix[2] is not None
    if not scored and not mix_q:
        title = cost_only_title or f"{title}: cost only"
        return _cost_only(fig, ax, path, title, groups, mix, group_noun, x_label)
    _setup(fig, ax, title, x_label, y_label)
    front: list[CostQuality] = []
    if frontier and len(scored) >= 2:
        front = mix_frontier([(c, q) for _, c, q in scored])
    if len(front) >= 2:  # (one point: a single model is best and cheapest; nothing to mix)
        ax.plot(*zip(*front, strict=True), color=FRONTIER, linestyle="--", linewidth=1.6,
                label=f"random mix of single {group_noun}s (frontier)", zorder=2)  # fmt: skip
    ax.scatter([c for _, c, _ in scored], [q for _, _, q in scored], s=60, color=SINGLE,
               edgecolor="white", linewidth=1.0, label=f"one {group_noun}", zorder=4)  # fmt: skip
    labels: list[tuple[float, float, str, dict[str, Any]]] = []
    xs, ys = [c for _, c, _ in scored], [q for _, _, q in scored]
    if mix is not None and mix[2] is not None:
        ax.scatter([mix[1]], [mix[2]], s=160, marker="*", color=ROUTED, edgecolor="white",
                   linewidth=0.8, label=mix[0], zorder=5)  # fmt: skip
        labels.append((mix[1], mix[2], mix[0], {"color": ROUTED, "fontweight": "bold"}))
        xs.append(mix[1])
        ys.append(mix[2])
    labels += [(c, q, n, {}) for n, c, q in scored]
    _limits(ax, xs, ys, x0=0.0)
    ax.set_xticks([t for t in ax.get_xticks() if t >= 0])  # no negative costs on the axis
    if unscored:
        ax.text(
            0.0,
            1.0,
            "no quality score yet for: " + ", ".join(unscored),
            transform=ax.transAxes,
            fontsize=9,
            color=MUTED,
            va="bottom",
        )
    _place_labels(fig, ax, labels, obstacles=front)
    return _finish(fig, ax, path)


def _cost_only(
    fig: Figure,
    ax: Axes,
    path: str | Path,
    title: str,
    groups: Sequence[tuple[str, float, float | None]],
    mix: tuple[str, float, float | None] | None,
    group_noun: str,
    x_label: str,
) -> Figure:
    """No quality scores: one horizontal bar of cost per group (and the mix), and the reason."""
    rows = [(n, c, False) for n, c, _ in groups] + ([(mix[0], mix[1], True)] if mix else [])
    rows.reverse()  # the first group on top
    _setup(fig, ax, title, x_label, group_noun)
    ax.grid(True, axis="x", color="#e3e6ec")
    ax.grid(False, axis="y")
    ys = list(range(len(rows)))
    singles = [(y, c) for y, (_, c, m) in zip(ys, rows, strict=True) if not m]
    mixed = [(y, c) for y, (_, c, m) in zip(ys, rows, strict=True) if m]
    if singles:
        ax.barh([y for y, _ in singles], [c for _, c in singles], color=SINGLE, height=0.6,
                label=f"one {group_noun}")  # fmt: skip
    if mixed:
        ax.barh([y for y, _ in mixed], [c for _, c in mixed], color=ROUTED, height=0.6,
                label=rows[mixed[0][0]][0])  # fmt: skip
    ax.set_yticks(ys, [n for n, _, _ in rows])
    top = max([c for _, c, _ in rows] or [1.0]) or 1.0
    ax.set_xlim(0, top * 1.25)
    for y, (_, c, _) in zip(ys, rows, strict=True):
        ax.text(c + top * 0.01, y, f"${c:,.4g}", va="center", fontsize=9, color=INK)
    ax.text(
        0.0,
        1.0,
        "no answered requests in this period"
        if not rows
        else "no quality scores were recorded for these requests, so this chart shows cost only\n"
        "(scores come from the judge, set under judge: in the routing file, or from "
        "POST /v1/feedback)",
        transform=ax.transAxes,
        fontsize=9,
        color=MUTED,
        va="bottom",
    )
    ax.set_title(title, fontsize=13, color=INK, loc="left", pad=34)
    return _finish(fig, ax, path)


@dataclass(frozen=True, slots=True)
class BenchSeries:
    """One measured endpoint of `tollgate bench-model`: per level (concurrency, aggregate
    tokens/s, per-stream tokens/s p50, TTFT p50 ms, per-token latency p50 ms)."""

    label: str
    levels: Sequence[tuple[int, float, float | None, float | None, float | None]]


_SERIES_COLOURS = (SINGLE, ROUTED, ORACLE, "#cc79a7", "#e69f00", "#56b4e9")


def bench_chart(path: str | Path, *, title: str, series: Sequence[BenchSeries]) -> Figure:
    """`tollgate bench-model --plot`: throughput (left) and latency (right) against
    concurrency, one colour per endpoint; solid lines aggregate tokens/s and time to first
    token, dashed lines per-stream tokens/s and per-token latency."""
    fig, ax = _figure(12.0, 5.5)
    lat = fig.add_subplot(1, 2, 2)
    ax.set_subplotspec(fig.add_gridspec(1, 2)[0, 0])
    lat.grid(True, color="#e3e6ec", linewidth=0.8)
    lat.set_axisbelow(True)
    for side in ("top", "right"):
        lat.spines[side].set_visible(False)
    levels = sorted({c for s in series for c, *_ in s.levels})
    for i, s in enumerate(series):
        colour = _SERIES_COLOURS[i % len(_SERIES_COLOURS)]
        pts = sorted(s.levels)
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], color=colour, marker="o", linewidth=2.0,
                label=f"{s.label}: aggregate")  # fmt: skip
        stream = [(p[0], p[2]) for p in pts if p[2] is not None]
        if stream:
            ax.plot(*zip(*stream, strict=True), color=colour, marker="s", linestyle="--",
                    linewidth=1.4, label=f"{s.label}: per stream (p50)")  # fmt: skip
        ttft = [(p[0], p[3]) for p in pts if p[3] is not None]
        if ttft:
            lat.plot(*zip(*ttft, strict=True), color=colour, marker="o", linewidth=2.0,
                     label=f"{s.label}: time to first token (p50)")  # fmt: skip
        itl = [(p[0], p[4]) for p in pts if p[4] is not None]
        if itl:
            lat.plot(*zip(*itl, strict=True), color=colour, marker="s", linestyle="--",
                     linewidth=1.4, label=f"{s.label}: per token (p50)")  # fmt: skip
    for a, y_label, sub in (
        (ax, "output tokens per second", "throughput"),
        (lat, "latency (ms)", "latency"),
    ):
        a.set_title(sub, fontsize=11, color=INK, loc="left")
        a.set_xlabel("concurrent streams", fontsize=11, color=INK)
        a.set_ylabel(y_label, fontsize=11, color=INK)
        a.tick_params(labelsize=10, colors=INK)
        if levels:
            a.set_xscale("log", base=2)
            a.set_xticks(levels, [str(c) for c in levels])
        a.set_ylim(bottom=0)
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False,
                 fontsize=9)  # fmt: skip
    fig.suptitle(title, fontsize=13, color=INK, x=0.02, ha="left")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.3, wspace=0.25)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight", pad_inches=0.2, facecolor="white")
    return fig
