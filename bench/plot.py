"""A histogram as a self-contained SVG file, for the benchmark's distributions."""

from __future__ import annotations

import math
from pathlib import Path


def _nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2, 2.5 or 5 × 10ⁿ) that cuts ``span`` into about ``ticks`` parts."""
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.1f}"


def write_histogram_svg(path: Path, samples: list[float], *, title: str, subtitle: str, x_label: str,
                        markers: list[tuple[str, float]]) -> None:
    """A histogram of ``samples`` with labelled vertical markers, as a self-contained SVG file.

    The axis runs to the largest sample, or to three times the last marker when a
    few outliers lie far beyond it; those are counted in a note, never dropped silently."""
    from html import escape

    width, height = 760, 420
    left, right, top, bottom = 64, 24, 64, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    largest = max(samples, default=1.0)
    limit = min(largest, 3 * max((v for _, v in markers), default=largest)) or 1.0
    tick = _nice_step(limit, 8)
    x_max = math.ceil(limit / tick) * tick
    bin_w = _nice_step(x_max, 40)
    bins = [0] * math.ceil(x_max / bin_w)
    beyond = 0
    for v in samples:
        if v > x_max:
            beyond += 1
        else:
            bins[min(len(bins) - 1, int(max(v, 0.0) // bin_w))] += 1
    y_tick = _nice_step(max(bins, default=1), 5)
    y_max = max(y_tick, math.ceil(max(bins, default=1) / y_tick) * y_tick)

    def x(v: float) -> float:
        return left + plot_w * v / x_max

    def y(n: float) -> float:
        return top + plot_h * (1 - n / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="24" font-size="15" font-weight="bold" fill="#222">{escape(title)}</text>',
           f'<text x="{left}" y="44" fill="#555">{escape(subtitle)}</text>']
    for i in range(int(y_max / y_tick) + 1):
        n = i * y_tick
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(n):.1f}" y2="{y(n):.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 8}" y="{y(n) + 4:.1f}" text-anchor="end" fill="#444">{_fmt(n)}</text>')
    for i in range(int(round(x_max / tick)) + 1):
        v = i * tick
        out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}" '
                   f'stroke="#444"/>')
        out.append(f'<text x="{x(v):.1f}" y="{top + plot_h + 19}" text-anchor="middle" fill="#444">{_fmt(v)}</text>')
    for i, n in enumerate(bins):
        if n:
            out.append(f'<rect x="{x(i * bin_w) + 0.5:.1f}" y="{y(n):.1f}" width="{max(1.0, x(bin_w) - left - 1):.1f}" '
                       f'height="{top + plot_h - y(n):.1f}" fill="#4c78a8"/>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#444"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#444"/>')
    colours = ["#e45756", "#b279a2", "#f58518"]
    for i, (name, v) in enumerate(markers):
        colour, at = colours[i % len(colours)], x(min(v, x_max))
        anchor, dx = ("end", -4) if at > left + plot_w * 0.8 else ("start", 4)
        out.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="6 3"/>')
        out.append(f'<text x="{at + dx:.1f}" y="{top + 14 + 16 * i}" text-anchor="{anchor}" fill="{colour}" '
                   f'font-weight="bold">{escape(name)} {_fmt(v)} ms</text>')
    if beyond:
        out.append(f'<text x="{left + plot_w}" y="{top - 6}" text-anchor="end" fill="#555">'
                   f'{beyond} beyond {_fmt(x_max)} ms (largest {_fmt(largest)} ms), not drawn</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 14}" text-anchor="middle" fill="#222">'
               f'{escape(x_label)} (bins of {_fmt(bin_w)} ms)</text>')
    out.append(f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'fill="#222">hot leads</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
