"""Small bar charts as inline SVG, for ``report.html`` (no script, no external asset).

Each function returns one ``<svg>`` element with the given ``id``, drawn on a fixed
640 x 240 canvas that scales with the page. Labels are numbers this module formats
itself, so nothing in them needs escaping beyond the caption, which is escaped here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["bars", "completion_histogram", "throughput_chart"]

_W, _H = 640, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 14, 40

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
    heights: Sequence[float],
    x_labels: tuple[str, str, str],
    x_title: str,
    y_title: str,
    empty: str = "no data yet",
) -> str:
    """A bar chart: ``heights`` left to right; three x labels (left, middle, right)."""
    out = [
        f'<svg id="{svg_id}" class="chart" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{html.escape(y_title)} by {html.escape(x_title)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    x0, y0 = _LEFT, _H - _BOTTOM
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    out.append(
        f'<path d="M{x0} {_TOP}V{y0}H{_W - _RIGHT}" fill="none" stroke="#888" stroke-width="1"/>'
    )
    top = max(heights, default=0.0)
    if not heights or top <= 0:
        out.append(
            f'<text x="{x0 + plot_w / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle" '
            f'fill="#888">{html.escape(empty)}</text></svg>'
        )
        return "".join(out)
    width = plot_w / len(heights)
    gap = min(2.0, width * 0.15)
    for i, value in enumerate(heights):
        if value <= 0:
            continue
        h = plot_h * value / top
        out.append(
            f'<rect x="{x0 + i * width + gap / 2:.1f}" y="{y0 - h:.1f}" '
            f'width="{max(0.5, width - gap):.1f}" height="{h:.1f}" fill="#3b7dd8">'
            f"<title>{_num(value)}</title></rect>"
        )
    # y axis: 0 and the top; x axis: three labels and the titles
    out.append(f'<text x="{x0 - 6}" y="{y0}" text-anchor="end" class="tick">0</text>')
    out.append(
        f'<text x="{x0 - 6}" y="{_TOP + 10}" text-anchor="end" class="tick">{_num(top)}</text>'
    )
    for label, x, anchor in zip(
        x_labels, (x0, x0 + plot_w / 2, x0 + plot_w), ("start", "middle", "end"), strict=True
    ):
        out.append(
            f'<text x="{x}" y="{y0 + 16}" text-anchor="{anchor}" class="tick">'
            f"{html.escape(label)}</text>"
        )
    out.append(
        f'<text x="{x0 + plot_w / 2}" y="{_H - 4}" text-anchor="middle" class="axis">'
        f"{html.escape(x_title)}</text>"
    )
    out.append(
        f'<text x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{html.escape(y_title)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def completion_histogram(svg_id: str, seconds: Sequence[float]) -> str:
    """How many tasks took how long, from creation to completion."""
    if not seconds:
        return bars(svg_id, [], ("", "", ""), "completion time (s)", "tasks")
    low, high = min(seconds), max(seconds)
    n_bins = max(1, min(40, math.ceil(math.sqrt(len(seconds)))))
    if high - low < 1e-9:
        low, high, n_bins = low - 0.5, high + 0.5, 1
    width = (high - low) / n_bins
    counts = [0.0] * n_bins
    for value in seconds:
        counts[min(n_bins - 1, int((value - low) / width))] += 1
    labels = (f"{_num(low)} s", f"{_num((low + high) / 2)} s", f"{_num(high)} s")
    return bars(svg_id, counts, labels, "completion time (task created to completed)", "tasks")


def throughput_chart(svg_id: str, events: Sequence[tuple[float, int]]) -> str:
    """Images finished per minute over time; ``events`` are (unix seconds, images)."""
    if not events:
        return bars(svg_id, [], ("", "", ""), "time since the first image", "images / min")
    start = min(t for t, _ in events)
    span = max(t for t, _ in events) - start
    step = next((s for s in _STEPS_S if span / s < 40), _STEPS_S[-1])
    n_bins = int(span / step) + 1
    counts = [0.0] * n_bins
    for t, images in events:
        counts[min(n_bins - 1, int((t - start) / step))] += images
    per_min = [c * 60 / step for c in counts]
    end = n_bins * step
    short = end < 60
    labels = (_clock(0, short), _clock(end / 2, short), _clock(end, short))
    title = f"time since the first image (bars of {_clock(step, step < 60)})"
    return bars(svg_id, per_min, labels, title, "images / min")
