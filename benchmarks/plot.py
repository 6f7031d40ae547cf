"""A small scatter-plot helper for the benchmarks: matplotlib when it is installed, else Pillow (a dependency of nas).

    panels = [Panel("MACs (M)", "test accuracy (%)", log_x=True), Panel("host ms", "test accuracy (%)")]
    series = [Series("plain CNN", [(1.18, 88.9), (1.73, 89.4)], [(0.21, 88.9), (0.25, 89.4)], "#1f77b4", "s")]
    backend = save_scatter("out.png", "title", panels, series)

Each series has one list of (x, y) points per panel; `line` joins a series' points in x order, `labels` name
single points. Markers: "o" circle, "s" square, "^" triangle, "D" diamond; `filled=False` draws outlines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Panel:
    x_label: str
    y_label: str
    log_x: bool = False


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Sequence[tuple[float, float]]]  # per panel
    color: str = "#1f77b4"
    marker: str = "o"
    line: bool = True
    filled: bool = True
    labels: Sequence[str] = field(default_factory=tuple)  # one per point (same in every panel), "" for none


def save_scatter(path: str | Path, title: str, panels: Sequence[Panel], series: Sequence[Series]) -> str:
    """Write the figure to `path` (PNG); returns the backend used ("matplotlib" or "pillow")."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        _pillow(Path(path), title, panels, series)
        return "pillow"
    matplotlib.use("Agg")
    _matplotlib(Path(path), title, panels, series)
    return "matplotlib"


def _matplotlib(path: Path, title: str, panels: Sequence[Panel], series: Sequence[Series]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for p, (panel, ax) in enumerate(zip(panels, axes[0], strict=True)):
        for s in series:
            pts = sorted(s.points[p]) if s.line else list(s.points[p])
            if not pts:
                continue
            xs, ys = [x for x, _ in pts], [y for _, y in pts]
            ax.plot(xs, ys, marker=s.marker, linestyle="-" if s.line else "none", color=s.color, label=s.name,
                    markerfacecolor=s.color if s.filled else "none")
            for (x, y), label in zip(s.points[p], s.labels, strict=False):
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if panel.log_x:
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel(panel.y_label)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 0.94))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- Pillow: axes, ticks, markers and a legend drawn by hand -----------------------------------------------

_PANEL_W, _PANEL_H, _MARGIN_L, _MARGIN_B, _MARGIN_T, _MARGIN_R, _TOP = 600, 450, 70, 55, 15, 20, 56


def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        for multipliers in ((1, 2, 5), tuple(range(1, 10))):
            out = [m * 10.0**exp for exp in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
                   for m in multipliers if low <= m * 10.0**exp <= high]
            if len(out) >= 3:
                return out
    raw = (high - low) / 6 or 1.0
    step = min((m * 10.0**math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    start = math.ceil(low / step) * step
    return [round(start + i * step, 10) for i in range(int((high - start) / step) + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}"


def _range(values: list[float], log: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if log:
        low, high = math.log10(low), math.log10(high)
    pad = (high - low) * 0.08 or 0.5
    low, high = low - pad, high + pad
    return (10**low, 10**high) if log else (low, high)


def _pillow(path: Path, title: str, panels: Sequence[Panel], series: Sequence[Series]) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: one bitmap font
        font = small = ImageFont.load_default()
    image = Image.new("RGB", (_PANEL_W * len(panels), _PANEL_H + _TOP), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title, fill="black", font=font)
    lx = _MARGIN_L
    for s in series:  # the legend: one row under the title, clear of the data
        _marker(draw, lx, 40, s.marker, s.color, s.filled)
        draw.text((lx + 10, 40), s.name, fill="black", font=small, anchor="lm")
        lx += 40 + int(draw.textlength(s.name, font=small))
    for p, panel in enumerate(panels):
        xs = [x for s in series for x, _ in s.points[p] if not panel.log_x or x > 0]
        ys = [y for s in series for _, y in s.points[p]]
        if not xs:
            continue
        (x0, x1), (y0, y1) = _range(xs, panel.log_x), _range(ys, False)
        left, top = p * _PANEL_W + _MARGIN_L, _TOP + _MARGIN_T
        right, bottom = (p + 1) * _PANEL_W - _MARGIN_R, _TOP + _PANEL_H - _MARGIN_B

        def px(x: float, x0: float = x0, x1: float = x1, left: int = left, right: int = right,
               log: bool = panel.log_x) -> float:
            f = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if log else (x - x0) / (x1 - x0)
            return left + f * (right - left)

        def py(y: float, y0: float = y0, y1: float = y1, top: int = top, bottom: int = bottom) -> float:
            return bottom - (y - y0) / (y1 - y0) * (bottom - top)

        for v in _ticks(x0, x1, panel.log_x):
            draw.line([(px(v), top), (px(v), bottom)], fill="#e6e6e6")
            draw.text((px(v), bottom + 4), _fmt_tick(v), fill="black", font=small, anchor="mt")
        for v in _ticks(y0, y1, False):
            draw.line([(left, py(v)), (right, py(v))], fill="#e6e6e6")
            draw.text((left - 4, py(v)), _fmt_tick(v), fill="black", font=small, anchor="rm")
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text(((left + right) / 2, bottom + 24), panel.x_label + (" (log scale)" if panel.log_x else ""),
                  fill="black", font=font, anchor="mt")
        label = Image.new("RGBA", (int(draw.textlength(panel.y_label, font=font)) + 4, 18), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, 0), panel.y_label, fill="black", font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (p * _PANEL_W + 6, int((top + bottom) / 2 - label.size[1] / 2)), label)
        for s in series:
            pts = [(px(x), py(y)) for x, y in s.points[p]]
            if s.line and len(pts) > 1:
                draw.line(sorted(pts), fill=s.color, width=2)
            for (x, y), text in zip(pts, list(s.labels) + [""] * len(pts), strict=False):
                _marker(draw, x, y, s.marker, s.color, s.filled)
                if text:
                    draw.text((x + 6, y - 6), text, fill="#444444", font=small, anchor="lb")
    image.save(path)


def _marker(draw: Any, x: float, y: float, marker: str, color: str, filled: bool, r: float = 4.5) -> None:
    fill = color if filled else "white"
    if marker == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill, outline=color, width=2)
    elif marker == "^":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=fill, outline=color, width=2)
    elif marker == "D":
        draw.polygon([(x, y - r - 1), (x - r - 1, y), (x, y + r + 1), (x + r + 1, y)], fill=fill, outline=color,
                     width=2)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=color, width=2)
