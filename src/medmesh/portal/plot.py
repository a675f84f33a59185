"""A small line chart as inline SVG, drawn on the server (no script, no library).

:func:`line_chart` takes series of ``(x, y)`` points and returns the SVG text, escaped, with a
``<title>`` and ``<desc>`` so screen readers announce what it shows. Each series gets its
own y scale (they measure different things) printed on its side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Final

__all__ = ["Series", "buckets", "line_chart"]

WIDTH: Final = 640
HEIGHT: Final = 240
_PAD_X: Final = 76
_PAD_Y: Final = 28


@dataclass(frozen=True)
class Series:
    label: str
    points: list[tuple[float, float]]
    css_class: str  # colours come from the stylesheet
    unit: Callable[[float], str] | None = None  # how its values read (default: plain numbers)

    def text(self, value: float) -> str:
        return self.unit(value) if self.unit is not None else _fmt(value)


def buckets(
    times: list[float], *, start: float, end: float, count: int = 24, cumulative: bool = False
) -> list[tuple[float, float]]:
    """``times`` counted in ``count`` equal intervals of [start, end] (a point at each
    interval's end), or their running total."""
    width = max(end - start, 1.0) / count
    counts = [0] * count
    for t in times:
        i = min(max(int((t - start) / width), 0), count - 1)
        counts[i] += 1
    out, total = [], 0
    for i, n in enumerate(counts):
        total += n
        out.append((start + (i + 1) * width, float(total if cumulative else n)))
    return out


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def line_chart(title: str, series: list[Series], *, chart_id: str = "chart") -> str:
    """The SVG of ``series`` (sharing the x axis, a time)."""
    xs = [x for s in series for x, _ in s.points]
    if not xs:
        return ""
    x0, x1 = min(xs), max(xs)
    span = max(x1 - x0, 1.0)
    inner_w, inner_h = WIDTH - 2 * _PAD_X, HEIGHT - 2 * _PAD_Y

    def px(x: float) -> float:
        return _PAD_X + (x - x0) / span * inner_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" class="chart">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
    ]
    summary = "; ".join(
        f"{s.label}: {s.text(s.points[-1][1]) if s.points else 0} at the end" for s in series
    )
    parts.append(f'<desc id="{chart_id}-desc">{escape(summary)}</desc>')
    bottom = _PAD_Y + inner_h
    parts.append(
        f'<line class="axis" x1="{_PAD_X}" y1="{bottom}" x2="{WIDTH - _PAD_X}" y2="{bottom}"/>'
    )
    for side, s in enumerate(series[:2]):
        top = max((y for _, y in s.points), default=0.0) or 1.0
        coords = " ".join(f"{px(x):.1f},{bottom - y / top * inner_h:.1f}" for x, y in s.points)
        parts.append(
            f'<polyline class="series {escape(s.css_class)}" fill="none" points="{coords}"/>'
        )
        ax = _PAD_X if side == 0 else WIDTH - _PAD_X
        anchor = "end" if side == 0 else "start"
        dx = -6 if side == 0 else 6
        parts.append(
            f'<line class="axis {escape(s.css_class)}" x1="{ax}" y1="{_PAD_Y}" x2="{ax}" y2="{bottom}"/>'
        )
        for value, y in ((top, _PAD_Y), (0.0, bottom)):
            parts.append(
                f'<text class="tick" x="{ax + dx}" y="{y + 4}" text-anchor="{anchor}">{escape(s.text(value))}</text>'
            )
        parts.append(
            f'<text class="legend {escape(s.css_class)}" x="{_PAD_X + side * inner_w / 2}" '
            f'y="{_PAD_Y - 10}">{escape(s.label)}</text>'
        )
    for x, anchor in ((x0, "start"), (x1, "end")):
        label = time.strftime("%m-%d %H:%M", time.gmtime(x))
        parts.append(
            f'<text class="tick" x="{px(x):.1f}" y="{bottom + 18}" text-anchor="{anchor}">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
