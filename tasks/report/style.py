"""The look the figures share: resolution, each method's name and colour, axis limits, and
log-scaled axes labelled in plain text."""

from __future__ import annotations

import math
import re

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.ticker import LogFormatterSciNotation

# The figures are WIDTH inches wide, drawn at two pixels per CSS pixel (sharp on HiDPI screens):
# Prefect's V2 UI shows a markdown image at most 690 CSS pixels wide, 100 per inch of WIDTH.
WIDTH = 6.9
DPI = 200
# Font sizes in points; at 100 CSS pixels per inch TEXT is 10.4 px tall, the smallest text drawn.
TEXT = 7.5
LABEL = 8.0
TITLE_SIZE = 11.0
MAX_MARKERS = 40  # per-epoch markers drawn per curve
BIG = 1e200  # larger values are off any chart: log-axis ticks beyond 1e300 overflow to inf

NOTE = {"textcoords": "offset points", "fontsize": TEXT, "fontweight": "bold"}  # beside a point
PANEL_TITLE = {"loc": "left", "fontweight": "bold", "fontsize": 8.5}
BELOW = {"loc": "upper center", "frameon": False}  # a legend under its panel

Limits = tuple[float, float]

_COLOURS = {"bgd": "#0072B2", "sgd": "#D55E00", "minibatch": "#009E73"}
_SPARE_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9", "#000000")
_NAMES = {"bgd": "Batch GD", "sgd": "Stochastic GD", "minibatch": "Mini-batch GD"}
_SUPERSCRIPTS = str.maketrans("0123456789-−+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁻⁺")
_POWER = re.compile(r"\^\{([^}]*)\}")


def method_name(method: str) -> str:
    """Readable name of a method."""
    return _NAMES.get(method, method)


def method_colour(method: str, index: int = 0) -> str:
    """Fixed colour of a method, the same in every panel."""
    return _COLOURS.get(method, _SPARE_COLOURS[index % len(_SPARE_COLOURS)])


def drawable(values: np.ndarray) -> np.ndarray:
    """Mask of values that can be drawn: finite and not absurdly large."""
    return np.isfinite(values) & (np.abs(values) < BIG)


def markevery(count: int) -> int:
    """Marker stride that keeps at most MAX_MARKERS markers on a curve."""
    return max(1, math.ceil(count / MAX_MARKERS))


def padded(lo: float, hi: float, frac: float = 0.05) -> Limits:
    """Linear limits around [lo, hi] with a margin, never of zero width."""
    span = hi - lo
    pad = frac * span if span > 0 else 0.05 * max(abs(lo), 1.0)
    return lo - pad, hi + pad


def log_limits(values: np.ndarray) -> Limits:
    """Log-axis limits around the finite positive values (a fallback if there are none)."""
    v = values[drawable(values) & (values > 0)]
    if v.size == 0:
        return 0.1, 10.0
    lo, hi = math.log10(v.min()), math.log10(v.max())
    pad = max(0.04 * (hi - lo), 0.12)
    return 10.0 ** max(lo - pad, -200.0), 10.0 ** min(hi + pad, 200.0)


def text_sizes(ax: Axes) -> None:
    """Give the tick labels and axis labels of `ax` the figures' sizes."""
    ax.tick_params(which="both", labelsize=TEXT)
    ax.xaxis.label.set_size(LABEL)
    ax.yaxis.label.set_size(LABEL)


def reference_line(ax: Axes, y: float, text: str, ls: str, lw: float, colour: str) -> None:
    """A horizontal line across `ax` at `y`, with `text` above its left end."""
    ax.axhline(y, ls=ls, lw=lw, color=colour, zorder=2)
    ax.text(
        0.01, y, text, transform=ax.get_yaxis_transform(), va="bottom", fontsize=TEXT, color=colour
    )


def plain_power_label(label: str) -> str:
    """A log-axis tick label such as $\\mathdefault{2\\times10^{-1}}$ as plain text, 2×10⁻¹.

    Labels it cannot convert stay as they are.
    """
    inner = label.removeprefix("$\\mathdefault{").removesuffix("}$")
    if inner == label:
        return label
    text = _POWER.sub(lambda m: m.group(1).translate(_SUPERSCRIPTS), inner.replace("\\times", "×"))
    return label if "\\" in text or "{" in text else text


class PlainLogFormatter(LogFormatterSciNotation):
    """Matplotlib's choice of log-axis labels, written without mathtext.

    Parsing mathtext labels is 11 % of the time to draw and save the default run's figure
    (7.0e9 instead of 6.2e9 instructions, cold process; CPU time 1.33 s instead of 1.21 s).
    """

    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain_power_label(super().__call__(x, pos))


def plain_log_labels(axis: Axis) -> None:
    """Label a log-scaled axis as matplotlib would, in plain text."""
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def log_scale(ax: Axes, axis: str = "y") -> None:
    """Put `axis` ("x" or "y") of `ax` on a log scale with plain-text tick labels."""
    getattr(ax, f"set_{axis}scale")("log")
    plain_log_labels(getattr(ax, f"{axis}axis"))
