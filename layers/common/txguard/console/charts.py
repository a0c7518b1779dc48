"""Plots drawn as SVG on the server: no JavaScript, nothing fetched, and the Content-Security-Policy stays
script-free. Every label is escaped; colours are presentation attributes (the CSP allows no inline style).
Each page shows the same numbers as a table beside the plot, with a CSV download.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 12, 12, 36
COLOURS = ("#2f6fb0", "#d0542c", "#3a9a5b", "#8a5cb8", "#b08a2f")
Number = int | float | Decimal


def _f(x: Number) -> str:
    return f"{float(x):.1f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= step * factor:
            return step * factor
    return value


def _frame(title: str, y_max: float, y_format: str) -> list[str]:
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" class="chart"><title>{escape(title)}</title>'
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _PAD_TOP + inner_h - inner_h * i / 4
        parts.append(
            f'<line x1="{_PAD_LEFT}" x2="{WIDTH - _PAD_RIGHT}" y1="{_f(y)}" y2="{_f(y)}" stroke="#ddd"/>'
            f'<text x="{_PAD_LEFT - 4}" y="{_f(y + 4)}" text-anchor="end" font-size="10">'
            f"{escape(format(value, y_format))}</text>"
        )
    return parts


def _x_labels(labels: Sequence[str], x_of: list[float]) -> list[str]:
    if not labels:
        return []
    every = max(1, len(labels) // 8)
    return [
        f'<text x="{_f(x_of[i])}" y="{HEIGHT - _PAD_BOTTOM + 14}" text-anchor="middle" font-size="10">'
        f"{escape(labels[i])}</text>"
        for i in range(0, len(labels), every)
    ]


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[Number]]], y_format: str = ",.0f"
) -> Markup:
    """Lines over categorical x positions (`labels`), one per (name, values); values share one y axis from 0."""
    y_max = _nice_max(max((float(v) for _, values in series for v in values), default=0))
    inner_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    n = max(len(labels), 1)
    x_of = [_PAD_LEFT + (inner_w * i / (n - 1) if n > 1 else inner_w / 2) for i in range(n)]
    parts = _frame(title, y_max, y_format)
    for k, (name, values) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        points = " ".join(
            f"{_f(x_of[i])},{_f(_PAD_TOP + inner_h - inner_h * float(v) / y_max)}" for i, v in enumerate(values)
        )
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        parts.append(
            f'<text x="{WIDTH - _PAD_RIGHT}" y="{_PAD_TOP + 12 * (k + 1)}" text-anchor="end" font-size="11" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    parts += _x_labels(labels, x_of)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Number], y_format: str = ",.0f") -> Markup:
    """One bar per label, from 0."""
    y_max = _nice_max(max((float(v) for v in values), default=0))
    inner_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    n = max(len(labels), 1)
    slot = inner_w / n
    parts = _frame(title, y_max, y_format)
    x_of = []
    for i, v in enumerate(values):
        h = inner_h * float(v) / y_max
        x = _PAD_LEFT + slot * i + slot * 0.1
        x_of.append(x + slot * 0.4)
        parts.append(
            f'<rect x="{_f(x)}" y="{_f(_PAD_TOP + inner_h - h)}" width="{_f(slot * 0.8)}" height="{_f(h)}" '
            f'fill="{COLOURS[0]}"><title>{escape(labels[i])}: {escape(str(v))}</title></rect>'
        )
    parts += _x_labels(labels, x_of)
    parts.append("</svg>")
    return Markup("".join(parts))


def timeline(title: str, points: Sequence[tuple[int, Number, str]], x_labels: tuple[str, str]) -> Markup:
    """Amounts over time: (epoch ms, amount, kind) with kind "genuine", "flagged", "fraud" (labelled) or
    "flagged fraud"; flagged points are drawn as red rings, labelled fraud as black crosses."""
    y_max = _nice_max(max((float(v) for _, v, _ in points), default=0))
    inner_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    t0 = min((t for t, _, _ in points), default=0)
    t1 = max((t for t, _, _ in points), default=1)
    span = max(t1 - t0, 1)
    parts = _frame(title, y_max, ",.0f")
    for t, v, kind in points:
        x = _PAD_LEFT + inner_w * (t - t0) / span
        y = _PAD_TOP + inner_h - inner_h * float(v) / y_max
        if "flagged" in kind:
            parts.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="5" fill="none" stroke="#d0542c" stroke-width="2"/>')
        else:
            parts.append(f'<circle cx="{_f(x)}" cy="{_f(y)}" r="2.5" fill="{COLOURS[0]}"/>')
        if "fraud" in kind:
            parts.append(
                f'<path d="M{_f(x - 4)},{_f(y - 4)}L{_f(x + 4)},{_f(y + 4)}'
                f'M{_f(x - 4)},{_f(y + 4)}L{_f(x + 4)},{_f(y - 4)}" '
                'stroke="#000" stroke-width="1.5"/>'
            )
    parts.append(
        f'<text x="{_PAD_LEFT}" y="{HEIGHT - 6}" font-size="10">{escape(x_labels[0])}</text>'
        f'<text x="{WIDTH - _PAD_RIGHT}" y="{HEIGHT - 6}" font-size="10" text-anchor="end">{escape(x_labels[1])}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def heatmap(title: str, names: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> Markup:
    """A correlation matrix (values -1..1): blue for positive, red for negative, blank when undefined."""
    n = max(len(names), 1)
    cell = min(36, (WIDTH - 180) // n)
    left, top = 170, 10
    size_h = top + cell * n + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {size_h}" role="img" '
        f'aria-label="{escape(title)}" class="chart"><title>{escape(title)}</title>'
    ]
    for i, name in enumerate(names):
        parts.append(
            f'<text x="{left - 4}" y="{top + cell * i + cell * 0.65:.1f}" text-anchor="end" font-size="10">'
            f"{escape(name)}</text>"
        )
        for j in range(len(names)):
            value = matrix[i][j]
            if value is None:
                colour = "#eee"
            else:
                level = int(255 - 200 * min(abs(value), 1))
                colour = f"rgb({level},{level},255)" if value >= 0 else f"rgb(255,{level},{level})"
            shown = "n/a" if value is None else f"{value:.2f}"
            parts.append(
                f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{colour}"><title>{escape(names[i])} × {escape(names[j])}: {shown}</title></rect>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def pr_curve(title: str, points: Sequence[tuple[float, float]], marked: tuple[float, float] | None = None) -> Markup:
    """A precision-recall curve: (recall, precision) pairs, both 0–1, drawn in order of recall as a line on a
    square-ish plot with both axes from 0 to 1; `marked` (recall, precision) is ringed: the operating point at
    the model's threshold."""
    inner_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    inner_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return _PAD_LEFT + inner_w * min(max(recall, 0.0), 1.0), _PAD_TOP + inner_h * (
            1 - min(max(precision, 0.0), 1.0)
        )

    parts = _frame(title, 1.0, ".2f")
    ordered = sorted(points)
    if ordered:
        line = " ".join(f"{_f(x)},{_f(y)}" for x, y in (xy(r, p) for r, p in ordered))
        parts.append(f'<polyline fill="none" stroke="{COLOURS[0]}" stroke-width="1.5" points="{line}"/>')
    if marked is not None:
        x, y = xy(*marked)
        parts.append(
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="5" fill="none" stroke="{COLOURS[1]}" stroke-width="2">'
            f"<title>threshold: recall {marked[0]:.3f}, precision {marked[1]:.3f}</title></circle>"
        )
    for i in range(5):
        x = _PAD_LEFT + inner_w * i / 4
        parts.append(
            f'<text x="{_f(x)}" y="{HEIGHT - _PAD_BOTTOM + 14}" text-anchor="middle" font-size="10">{i / 4:.2f}</text>'
        )
    parts.append(
        f'<text x="{_PAD_LEFT + inner_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10">recall</text>'
        f'<text x="{_PAD_LEFT + 4}" y="{_PAD_TOP + 10}" font-size="10">precision</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def confusion_matrix(title: str, tp: int, fp: int, fn: int, tn: int) -> Markup:
    """The confusion matrix at a threshold as a 2×2 grid: rows are the labels (fraud, genuine), columns the
    prediction (flagged, not flagged); each cell shaded by its share of its row."""
    cell_w, cell_h, left, top = 170, 60, 150, 40
    cells = (
        ("fraud", ((tp, "true positives"), (fn, "false negatives"))),
        ("genuine", ((fp, "false positives"), (tn, "true negatives"))),
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {left + 2 * cell_w + 20} {top + 2 * cell_h + 10}" '
        f'role="img" aria-label="{escape(title)}" class="chart confusion"><title>{escape(title)}</title>',
        f'<text x="{left + cell_w / 2}" y="{top - 8}" text-anchor="middle" font-size="12">flagged</text>',
        f'<text x="{left + 1.5 * cell_w}" y="{top - 8}" text-anchor="middle" font-size="12">not flagged</text>',
    ]
    for i, (label, row) in enumerate(cells):
        total = sum(n for n, _ in row)
        y = top + cell_h * i
        parts.append(
            f'<text x="{left - 8}" y="{y + cell_h / 2 + 4}" text-anchor="end" font-size="12">labelled {label}</text>'
        )
        for j, (n, name) in enumerate(row):
            share = n / total if total else 0.0
            level = int(255 - 170 * share)
            colour = f"rgb({level},{level},255)" if i == j else f"rgb(255,{level},{level})"
            x = left + cell_w * j
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{colour}">'
                f"<title>{name}: {n}</title></rect>"
                f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2}" text-anchor="middle" font-size="16">{n:,}</text>'
                f'<text x="{x + cell_w / 2}" y="{y + cell_h / 2 + 16}" text-anchor="middle" font-size="10">'
                f"{name} ({share:.1%} of row)</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def horizontal_bars(title: str, labels: Sequence[str], values: Sequence[Number], value_format: str = ".4g") -> Markup:
    """One horizontal bar per label, from 0, in the order given (feature importance: largest first)."""
    bar_h, left, top = 18, 190, 10
    height = top + bar_h * max(len(labels), 1) + 10
    v_max = max((float(v) for v in values), default=0.0) or 1.0
    inner_w = WIDTH - left - 80
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" class="chart"><title>{escape(title)}</title>'
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + bar_h * i
        w = inner_w * max(float(value), 0.0) / v_max
        shown = escape(format(float(value), value_format))
        parts.append(
            f'<text x="{left - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" font-size="11">{escape(label)}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{_f(w)}" height="{bar_h - 4}" fill="{COLOURS[0]}">'
            f"<title>{escape(label)}: {shown}</title></rect>"
            f'<text x="{_f(left + w + 4)}" y="{y + bar_h * 0.7:.1f}" font-size="10">{shown}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
