"""Small stacked bar charts as inline SVG, for ``report.html`` (no script, no asset).

Each function returns one ``<svg>`` element with the given ``id``, one colour per series
(per resolution in the report) stacked in each bar, with a legend. The canvas is
``width`` x :data:`HEIGHT` user units and scales with the page; the report draws every
chart twice, :data:`WIDE` for screens and :data:`NARROW` for phones (CSS shows one), so
that on a phone the labels are drawn near their nominal size instead of shrunk to a
third. Labels are numbers this module formats itself; series names and titles are
escaped here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

__all__ = ["HEIGHT", "NARROW", "WIDE", "bars", "completion_histogram", "throughput_chart"]

WIDE, NARROW, HEIGHT = 640, 360, 260
_RIGHT, _TOP, _BOTTOM = 10, 30, 44
#: colour-blind-safe colours (Okabe-Ito), one per series in order
_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#999999")

#: bin widths (seconds) the throughput chart may use, smallest first
_STEPS_S = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400
)  # fmt: skip


def _num(x: float) -> str:
    if x >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _clock(seconds: float, short: bool = False) -> str:
    """``1:02:03`` or ``2:03``; ``short`` spans (under a minute) in seconds: ``2.5 s``."""
    if short:
        return f"{_num(seconds)} s"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bars(
    svg_id: str,
    series: Mapping[str, Sequence[float]],
    x_labels: tuple[str, str, str],
    x_title: str,
    y_title: str,
    width: int = WIDE,
    empty: str = "no data yet",
) -> str:
    """A stacked bar chart: each series gives its heights left to right (all the same
    length); three x labels (left, middle, right)."""
    narrow = width < WIDE
    tick, axis = (13, 13) if narrow else (11, 12)
    left = 44 if narrow else 52
    e = html.escape
    out = [
        f'<svg id="{e(svg_id)}" class="chart" viewBox="0 0 {width} {HEIGHT}" role="img" '
        f'aria-label="{e(y_title)} by {e(x_title)}" xmlns="http://www.w3.org/2000/svg" '
        f'style="--tick:{tick}px;--axis:{axis}px">'
    ]
    x0, y0 = left, HEIGHT - _BOTTOM
    plot_w, plot_h = width - left - _RIGHT, HEIGHT - _TOP - _BOTTOM
    out.append(
        f'<path d="M{x0} {_TOP}V{y0}H{width - _RIGHT}" fill="none" stroke="#888" stroke-width="1"/>'
    )
    n = max((len(h) for h in series.values()), default=0)
    totals = [sum(h[i] for h in series.values() if i < len(h)) for i in range(n)]
    top = max(totals, default=0.0)
    if not n or top <= 0:
        out.append(
            f'<text x="{x0 + plot_w / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle" '
            f'class="axis" fill="#888">{e(empty)}</text></svg>'
        )
        return "".join(out)
    bar_w = plot_w / n
    gap = min(2.0, bar_w * 0.15)
    names = list(series)
    for i in range(n):
        base = 0.0
        for s, name in enumerate(names):
            value = series[name][i] if i < len(series[name]) else 0.0
            if value <= 0:
                continue
            y_low, y_high = plot_h * base / top, plot_h * (base + value) / top
            base += value
            out.append(
                f'<rect x="{x0 + i * bar_w + gap / 2:.1f}" y="{y0 - y_high:.1f}" '
                f'width="{max(0.5, bar_w - gap):.1f}" height="{y_high - y_low:.1f}" '
                f'fill="{_COLOURS[s % len(_COLOURS)]}" data-series="{e(name)}">'
                f"<title>{e(name)}: {_num(value)}</title></rect>"
            )
    # y axis: 0 and the top; x axis: three labels and the titles
    out.append(f'<text x="{x0 - 6}" y="{y0}" text-anchor="end" class="tick">0</text>')
    out.append(
        f'<text x="{x0 - 6}" y="{_TOP + tick}" text-anchor="end" class="tick">{_num(top)}</text>'
    )
    for label, x, anchor in zip(
        x_labels, (x0, x0 + plot_w / 2, x0 + plot_w), ("start", "middle", "end"), strict=True
    ):
        out.append(
            f'<text x="{x}" y="{y0 + tick + 5}" text-anchor="{anchor}" class="tick">'
            f"{e(label)}</text>"
        )
    out.append(
        f'<text x="{x0 + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
        f"{e(x_title)}</text>"
    )
    out.append(
        f'<text x="{axis}" y="{_TOP + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 {axis} {_TOP + plot_h / 2})">{e(y_title)}</text>'
    )
    # legend, top right: a swatch and the name of each series
    x = width - _RIGHT
    for s, name in reversed(list(enumerate(names))):
        text_w = 0.6 * tick * len(name)
        x -= text_w
        out.append(f'<text x="{x:.1f}" y="{_TOP - 10}" class="tick">{e(name)}</text>')
        x -= tick + 4
        out.append(
            f'<rect x="{x:.1f}" y="{_TOP - 10 - tick + 2}" width="{tick}" height="{tick}" '
            f'fill="{_COLOURS[s % len(_COLOURS)]}" class="swatch"/>'
        )
        x -= 12
    out.append("</svg>")
    return "".join(out)


def completion_histogram(
    svg_id: str, seconds: Mapping[str, Sequence[float]], width: int = WIDE
) -> str:
    """How many tasks took how long, from creation to completion, one colour per series
    (resolution); every series in the same bins."""
    title = "completion time (task created to completed)"
    values = [v for vs in seconds.values() for v in vs]
    if not values:
        return bars(svg_id, {}, ("", "", ""), title, "tasks", width)
    low, high = min(values), max(values)
    n_bins = max(1, min(40 if width >= WIDE else 24, math.ceil(math.sqrt(len(values)))))
    if high - low < 1e-9:
        low, high, n_bins = low - 0.5, high + 0.5, 1
    step = (high - low) / n_bins
    series: dict[str, list[float]] = {}
    for name in sorted(seconds):
        counts = [0.0] * n_bins
        for value in seconds[name]:
            counts[min(n_bins - 1, int((value - low) / step))] += 1
        series[name] = counts
    labels = (f"{_num(low)} s", f"{_num((low + high) / 2)} s", f"{_num(high)} s")
    return bars(svg_id, series, labels, title, "tasks", width)


def throughput_chart(
    svg_id: str, events: Mapping[str, Sequence[tuple[float, int]]], width: int = WIDE
) -> str:
    """Images finished per minute over time, one colour per series (resolution);
    ``events`` are (unix seconds, images)."""
    every = [t for evs in events.values() for t, _ in evs]
    if not every:
        return bars(svg_id, {}, ("", "", ""), "time since the first image", "images / min", width)
    start = min(every)
    span = max(every) - start
    most = 40 if width >= WIDE else 24
    step = next((s for s in _STEPS_S if span / s < most), _STEPS_S[-1])
    n_bins = int(span / step) + 1
    series: dict[str, list[float]] = {}
    for name in sorted(events):
        counts = [0.0] * n_bins
        for t, images in events[name]:
            counts[min(n_bins - 1, int((t - start) / step))] += images * 60 / step
        series[name] = counts
    end = n_bins * step
    short = end < 60
    labels = (_clock(0, short), _clock(end / 2, short), _clock(end, short))
    title = f"time since the first image (bars of {_clock(step, step < 60)})"
    return bars(svg_id, series, labels, title, "images / min", width)
