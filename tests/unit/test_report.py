"""The comparison report: its figure, figure files, results rows, markdown and loss table."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from tasks.history import History, MethodResult
from tasks.params import RunParams
from tasks.report.figure import MAX_POINTS, build_figure, save_figure
from tasks.report.style import DPI, TEXT, WIDTH, log_limits, plain_power_label
from tasks.report.tables import (
    caption,
    comparison_markdown,
    format_cell,
    loss_table,
    markdown_text,
    results_rows,
    table_artifact,
)
from tasks.stats import Moments, moments

EPOCHS = 20
SLOPE, INTERCEPT = -5.0, 0.0
CAPTION = "n = 100, noise 0.4, seed 0, 20 epochs, steps 0.1/0.5/0.02, batch 10, start (-10, -20)"


def tutorial_data(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's data set, or an evenly spaced one of n points over the same range."""
    x = np.linspace(-5.0, 5.0, n, endpoint=False).astype(np.float32)
    noise = np.random.default_rng(seed).standard_normal(n)
    return x, (SLOPE * x + 0.4 * noise).astype(np.float32)


def make_history(
    method: str,
    loss: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    per_epoch: int,
    *,
    lr: float,
    reason: str | None = None,
) -> History:
    """A History built directly, as training would return it."""
    epoch = np.arange(len(loss))
    return History(
        method=method,
        epoch=epoch,
        loss=np.asarray(loss, dtype=np.float64),
        w=np.asarray(w, dtype=np.float64),
        b=np.asarray(b, dtype=np.float64),
        updates=epoch * per_epoch,
        diverged=reason is not None,
        reason=reason,
        stability_bound=0.038,
        lr=lr,
        engine="reference",
        dtype="float32",
        compute_dtype="float64",
        wall_time_s=0.01,
    )


def converging(method: str, m: Moments, rate: float, per_epoch: int, lr: float) -> History:
    """A history whose (w, b) approach least squares geometrically from (-10, -20)."""
    w_ls, b_ls = m.least_squares()
    decay = rate ** np.arange(EPOCHS + 1)
    w = w_ls + (-10.0 - w_ls) * decay
    b = b_ls + (-20.0 - b_ls) * decay
    return make_history(method, np.asarray(m.mse(w, b)), w, b, per_epoch, lr=lr)


def diverging(m: Moments) -> History:
    """An SGD history that blows up to 1e13 and then overflows to inf and NaN."""
    w = np.full(EPOCHS + 1, np.nan)
    b = np.full(EPOCHS + 1, np.nan)
    w[:5] = [-10.0, 1e2, 1e4, 1e6, np.inf]
    b[:5] = [-20.0, -1e2, -1e4, -1e6, -np.inf]
    loss = np.full(EPOCHS + 1, np.nan)
    loss[:5] = [float(m.mse(-10.0, -20.0)), 1e5, 1e9, 1e13, np.inf]
    reason = "step size 0.5 is above the stability bound 0.038: the loss overflowed at epoch 4"
    return make_history("sgd", loss, w, b, 100, lr=0.5, reason=reason)


def tutorial_sgd(m: Moments) -> History:
    """SGD as the tutorial runs it: it diverges yet stays finite, ending near 1e13."""
    growth = 10.0 ** np.linspace(0.0, 6.0, EPOCHS)
    w = np.concatenate([[-10.0], 3.6 * growth])
    b = np.concatenate([[-20.0], 9.9 * growth])
    loss = np.asarray(m.mse(w, b))
    return make_history("sgd", loss, w, b, 100, lr=0.1, reason="loss grew 1e13-fold")


def results_of(histories: list[History]) -> list[MethodResult]:
    """The training task's summaries of these histories."""
    return [MethodResult.from_history(h, f"/h/{h.method}.parquet") for h in histories]


def draw(histories: list[History], x: np.ndarray, y: np.ndarray, m: Moments, **true) -> Figure:
    """Build and draw the figure with every warning raised as an error."""
    true = {"true_slope": SLOPE, "true_intercept": INTERCEPT} | true
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = build_figure(histories, x, y, m, caption=CAPTION, **true)
        fig.savefig(io.BytesIO(), format="png")
    return fig


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return tutorial_data()


@pytest.fixture(scope="module")
def stats(data: tuple[np.ndarray, np.ndarray]) -> Moments:
    return moments(*data)


@pytest.fixture(scope="module")
def histories(stats: Moments) -> list[History]:
    return [
        converging("bgd", stats, 0.7, 1, 0.1),
        diverging(stats),
        converging("minibatch", stats, 0.5, 10, 0.02),
    ]


@pytest.fixture(scope="module")
def figure(data: tuple[np.ndarray, np.ndarray], stats: Moments, histories: list[History]) -> Figure:
    return draw(histories, *data, stats)


def panels(fig: Figure) -> list:
    """The four main axes, without the colour bar."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def texts(fig: Figure) -> str:
    """Every piece of text in the figure, one per line."""
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# --- the figure --------------------------------------------------------------------------


def test_figure_has_four_labelled_panels(figure: Figure) -> None:
    epoch_ax, update_ax, data_ax, path_ax = panels(figure)
    assert (epoch_ax.get_xscale(), epoch_ax.get_yscale()) == ("linear", "log")
    assert (update_ax.get_xscale(), update_ax.get_yscale()) == ("log", "log")
    assert (data_ax.get_xscale(), data_ax.get_yscale()) == ("linear", "linear")
    assert "epoch" in epoch_ax.get_xlabel()
    assert "updates" in update_ax.get_xlabel()
    assert "MSE" in epoch_ax.get_ylabel()
    assert (data_ax.get_xlabel(), data_ax.get_ylabel()) == ("x", "y")
    assert (path_ax.get_xlabel(), path_ax.get_ylabel()) == ("slope w", "intercept b")
    assert CAPTION in texts(figure)
    assert "batch vs stochastic" not in texts(figure)  # the title is the artifact's


def test_every_axis_limit_is_finite(figure: Figure) -> None:
    for ax in figure.axes:
        for lo, hi in (ax.get_xlim(), ax.get_ylim()):
            assert np.isfinite([lo, hi]).all(), ax.get_title(loc="left")
            assert lo < hi, ax.get_title(loc="left")


def test_diverged_method_is_labelled(figure: Figure) -> None:
    legend = [leg for sub in figure.subfigs for leg in sub.legends]
    labels = [t.get_text() for leg in legend for t in leg.get_texts()]
    sgd = next(label for label in labels if label.startswith("Stochastic"))
    assert "DIVERGED" in sgd
    assert "inf/nan from epoch 4" in sgd
    assert not any("DIVERGED" in label for label in labels if not label.startswith("Stochastic"))
    assert "Stochastic GD: diverged, not drawn" in legend_labels(panels(figure)[2])
    assert "diverged → off the chart" in texts(figure)


def test_diverged_values_do_not_set_limits(
    figure: Figure, data: tuple[np.ndarray, np.ndarray], stats: Moments
) -> None:
    _, _, data_ax, path_ax = panels(figure)
    y = data[1]
    lo, hi = data_ax.get_ylim()
    assert lo <= y.min()
    assert hi >= y.max()
    assert hi - lo < 1.3 * float(np.ptp(y))
    w_ls, b_ls = stats.least_squares()
    w_lo, w_hi = path_ax.get_xlim()
    b_lo, b_hi = path_ax.get_ylim()
    assert w_lo < -10.0 < w_ls < w_hi < 0.0
    assert b_lo < -20.0 < b_ls < b_hi < 5.0


def test_finite_divergence_stays_off_the_chart(
    data: tuple[np.ndarray, np.ndarray], stats: Moments
) -> None:
    fig = draw([converging("bgd", stats, 0.7, 1, 0.1), tutorial_sgd(stats)], *data, stats)
    _, _, data_ax, path_ax = panels(fig)
    sgd_lines = [line for line in data_ax.get_lines() if "Stochastic" in line.get_label()]
    assert len(sgd_lines) == 1
    assert len(sgd_lines[0].get_xdata()) == 0  # a legend entry only, no line drawn
    assert np.ptp(data_ax.get_ylim()) < 1.3 * float(np.ptp(data[1]))
    assert np.ptp(path_ax.get_xlim()) < 20.0
    assert "diverged → off the chart" in texts(fig)


def test_loss_panels_reach_divergence_and_floor(figure: Figure, stats: Moments) -> None:
    epoch_ax, update_ax, _, _ = panels(figure)
    floor = float(stats.mse(*stats.least_squares()))
    for ax in (epoch_ax, update_ax):
        lo, hi = ax.get_ylim()
        assert lo < floor
        assert hi > 1e13


def test_the_floor_is_in_view_when_no_method_comes_near_it(
    data: tuple[np.ndarray, np.ndarray], stats: Moments
) -> None:
    fig = draw([tutorial_sgd(stats)], *data, stats)
    floor = float(stats.mse(*stats.least_squares()))
    for ax in panels(fig)[:2]:
        lo, hi = ax.get_ylim()
        assert lo < floor < hi


def test_each_method_keeps_its_colour_whatever_the_order(
    data: tuple[np.ndarray, np.ndarray], stats: Moments, histories: list[History]
) -> None:
    def colours(fig: Figure) -> dict[str, str]:
        (legend,) = fig.subfigs[0].legends
        return {
            t.get_text().split(",")[0]: h.get_color()
            for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
        }

    forward = colours(draw(histories, *data, stats))
    backward = colours(draw(histories[::-1], *data, stats))
    assert forward == backward
    assert len(set(forward.values())) == 3
    epoch_ax = panels(draw(histories[::-1], *data, stats))[0]
    assert epoch_ax.get_lines()[0].get_color() == forward["Mini-batch GD"]


def test_large_data_is_subsampled_deterministically() -> None:
    x, y = tutorial_data(200_000, seed=1)
    m = moments(x, y)
    hs = [converging("bgd", m, 0.7, 1, 0.1)]

    def drawn_points() -> np.ndarray:
        fig = build_figure(hs, x, y, m, true_slope=SLOPE, true_intercept=INTERCEPT, caption="")
        return np.asarray(panels(fig)[2].get_lines()[0].get_xdata())

    first, second = drawn_points(), drawn_points()
    assert first.size == MAX_POINTS
    np.testing.assert_array_equal(first, second)


def test_users_data_gets_no_true_line(
    data: tuple[np.ndarray, np.ndarray], stats: Moments, histories: list[History]
) -> None:
    fig = draw(histories, *data, stats, true_slope=None, true_intercept=None)
    labels = legend_labels(panels(fig)[2])
    assert "Batch GD" in labels
    assert not any("true line" in label for label in labels)


def test_an_empty_comparison_is_refused(
    data: tuple[np.ndarray, np.ndarray], stats: Moments
) -> None:
    with pytest.raises(ValueError, match="at least one history"):
        build_figure([], *data, stats, true_slope=None, true_intercept=None, caption="")


def test_save_figure_writes_png_and_svg_atomically(figure: Figure, tmp_path: Path) -> None:
    png, svg = tmp_path / "out" / "comparison.png", tmp_path / "svg" / "comparison.svg"
    save_figure(figure, png, svg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < png.stat().st_size < 400_000
    assert b"<svg" in svg.read_bytes()[:2000]
    assert sorted(os.listdir(png.parent)) == ["comparison.png"]
    assert sorted(os.listdir(svg.parent)) == ["comparison.svg"]
    plain = tmp_path / "plain"
    plain.touch()  # mode 0o666 less the umask, as for any ordinary new file
    assert png.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_save_figure_draws_at_the_figures_resolution(figure: Figure, tmp_path: Path) -> None:
    png = tmp_path / "c.png"
    save_figure(figure, png, tmp_path / "c.svg")
    width, height = (int.from_bytes(png.read_bytes()[i : i + 4], "big") for i in (16, 20))
    assert (width, height) == (round(WIDTH * DPI), round(figure.get_figheight() * DPI))


def test_figure_text_is_at_least_10_px_where_the_v2_ui_shows_it(figure: Figure) -> None:
    """Prefect's V2 UI shows a markdown image at most 690 px wide: every text then stays 10 px
    tall or more."""
    shown = 690 / (WIDTH * DPI)  # CSS pixels per pixel of the PNG
    sizes = [t.get_fontsize() * DPI / 72 * shown for t in figure.findobj(Text) if t.get_text()]
    assert min(sizes) >= 10.0
    assert TEXT * DPI / 72 * shown >= 10.0


def test_save_figure_keeps_the_figures_layout_engine(
    data: tuple[np.ndarray, np.ndarray], stats: Moments, histories: list[History], tmp_path: Path
) -> None:
    fig = build_figure(histories, *data, stats, true_slope=None, true_intercept=None, caption="")
    engine = fig.get_layout_engine()
    save_figure(fig, tmp_path / "c.png", tmp_path / "c.svg")
    assert fig.get_layout_engine() is engine


def test_save_figure_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    class Broken(Figure):
        def savefig(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(Broken(), tmp_path / "a.png", tmp_path / "a.svg")
    assert os.listdir(tmp_path) == []


def test_a_failed_save_leaves_neither_file(figure: Figure, tmp_path: Path) -> None:
    class NoSvg(Figure):
        def savefig(self, fname: object, *, format: str, **kwargs: object) -> None:
            if format == "svg":
                raise RuntimeError("disk full")
            figure.savefig(fname, format=format, **kwargs)

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(NoSvg(), tmp_path / "a.png", tmp_path / "a.svg")
    assert os.listdir(tmp_path) == []


def test_log_limits_ignore_zero_and_non_finite() -> None:
    lo, hi = log_limits(np.array([0.0, 1.0, 1e3, np.nan, np.inf, -np.inf]))
    assert 0.5 < lo < 1.0
    assert 1e3 < hi < 2e3
    assert log_limits(np.array([0.0, np.nan])) == (0.1, 10.0)


@pytest.mark.parametrize(
    ("label", "plain"),
    [
        ("$\\mathdefault{10^{3}}$", "10³"),
        ("$\\mathdefault{10^{-12}}$", "10⁻¹²"),
        ("$\\mathdefault{2\\times10^{-1}}$", "2×10⁻¹"),
        ("$\\mathdefault{10^{0}}$", "10⁰"),
        ("", ""),
        ("$\\mathdefault{\\frac{1}{2}}$", "$\\mathdefault{\\frac{1}{2}}$"),  # left as mathtext
    ],
)
def test_log_tick_labels_are_plain_text(label: str, plain: str) -> None:
    assert plain_power_label(label) == plain


def test_no_tick_label_needs_mathtext(figure: Figure) -> None:
    """Mathtext labels cost a parse each time a figure is drawn; every log axis avoids them."""
    labels = [
        t.get_text()
        for ax in figure.axes
        for axis in (ax.xaxis, ax.yaxis)
        for t in axis.get_ticklabels(which="both")
    ]
    assert any("⁻" in t or "⁰" in t or "¹" in t for t in labels)
    assert not [t for t in labels if t.startswith("$")]


# --- the tables --------------------------------------------------------------------------


def test_results_rows(histories: list[History], stats: Moments) -> None:
    rows = results_rows(results_of(histories), stats, SLOPE, INTERCEPT)
    assert [row["method"] for row in rows] == ["bgd", "sgd", "minibatch"]
    bgd, sgd, _ = rows
    w_ls, b_ls = stats.least_squares()
    assert bgd["w"] == histories[0].w[-1]
    assert bgd["b"] == histories[0].b[-1]
    assert bgd["w_minus_true"] == pytest.approx(bgd["w"] - SLOPE)
    assert bgd["b_minus_true"] == pytest.approx(bgd["b"] - INTERCEPT)
    assert bgd["b_minus_lstsq"] == pytest.approx(bgd["b"] - b_ls)
    assert bgd["w_minus_lstsq"] == pytest.approx(bgd["w"] - w_ls)
    assert (bgd["updates"], bgd["diverged"], bgd["reason"]) == (EPOCHS, False, None)
    assert (bgd["lr"], bgd["wall_time_s"], bgd["stability_bound"]) == (0.1, 0.01, 0.038)
    assert sgd["diverged"] is True
    assert sgd["updates"] == 100 * EPOCHS
    assert sgd["reason"].startswith("step size 0.5")
    assert math.isnan(sgd["final_loss"])
    assert math.isnan(sgd["w_minus_true"])


def test_results_rows_on_users_data_leave_the_true_line_empty(
    histories: list[History], stats: Moments
) -> None:
    rows = results_rows(results_of(histories), stats, None, None)
    assert all(r["w_minus_true"] is None and r["b_minus_true"] is None for r in rows)
    assert all(r["w_minus_lstsq"] is not None for r in rows)


def test_comparison_markdown(histories: list[History], stats: Moments) -> None:
    rows = results_rows(results_of(histories), stats, SLOPE, INTERCEPT)
    rows[1] = rows[1] | {"w": math.inf, "b": -math.inf}
    png = b"\x89PNG fake image bytes"
    text = comparison_markdown(rows, png, CAPTION, "synthetic, seed 0")
    image = base64.b64encode(png).decode()
    assert f"![{markdown_text(CAPTION)}](data:image/png;base64,{image})" in text
    assert text.count(markdown_text(CAPTION)) == 1  # the figure's alternative text only
    assert "Data: synthetic, seed 0" in text
    results, details = [b.splitlines() for b in text.split("\n\n") if b.startswith("| ")]
    for table in (results, details):
        assert len(table[0].split(" | ")) <= 7  # it fits the V2 UI's 690 px
    body = {line.split(" | ")[0].removeprefix("| "): line for line in results[2:]}
    body |= {"details " + line.split(" | ")[0].removeprefix("| "): line for line in details[2:]}
    methods = ["bgd", "sgd", "minibatch"]
    assert list(body) == [*methods, *(f"details {m}" for m in methods)]
    assert "**yes**" in body["sgd"]
    assert "**yes**" not in body["bgd"]
    assert "| nan |" in body["sgd"]
    assert "overflow (inf)" in body["sgd"]
    assert "overflow (-inf)" in body["sgd"]
    assert "| 2,000 |" in body["sgd"]
    assert "| nan |" in body["details sgd"]
    assert "| 0.038 |" in body["details bgd"]
    assert "- **sgd diverged** (step 0.5): step size 0.5 is above the stability bound" in text
    assert "bgd diverged" not in text


def test_cell_format() -> None:
    assert format_cell(123456.789) == "1.235e+05"
    assert format_cell(0.000123456) == "0.0001235"
    assert format_cell(-4.99712) == "-4.997"
    assert format_cell("a|b") == "a\\|b"
    assert format_cell(None) == ""
    assert (format_cell(True), format_cell(False)) == ("**yes** ⚠", "no")


def test_loss_table_is_json_safe(histories: list[History]) -> None:
    table = loss_table(histories)
    assert [row["epoch"] for row in table] == list(range(EPOCHS + 1))
    json.dumps(table, allow_nan=False)
    assert table[3]["sgd"] == 1e13
    assert table[4]["sgd"] is None
    assert table[1]["bgd"] == float(f"{histories[0].loss[1]:.4g}") != histories[0].loss[1]
    assert table[EPOCHS]["sgd"] is None
    assert table[EPOCHS]["bgd"] == pytest.approx(histories[0].final_loss, rel=1e-3)
    assert all(set(row) == {"epoch", "bgd", "sgd", "minibatch"} for row in table)


def test_loss_table_is_thinned_evenly_keeping_both_ends(histories: list[History]) -> None:
    table = loss_table(histories, max_rows=5)
    assert [row["epoch"] for row in table] == [0, 5, 10, 15, 20]


def test_caption_names_the_synthetic_data_and_every_setting() -> None:
    text = caption(RunParams(), "synthetic")
    assert text.startswith("preset default · n = 100, noise σ = 0.4, seed 0 · 20 epochs")
    assert "from (w, b) = (-10, -20)" in text
    assert "step sizes: bgd 0.1, sgd 0.01, minibatch 0.02 (batch 10)" in text
    assert text.endswith("points in stored order · float32, fast engine")


def test_caption_credits_the_users_file() -> None:
    source = "file /x/mine.parquet: columns a (x) and b (y), 200 rows, sha256 0123456789ab"
    text = caption(RunParams(data="/x/mine.parquet", methods=["bgd"], shuffle=True), source)
    assert f"data: {source}" in text
    assert "noise" not in text
    assert "(batch" not in text
    assert "shuffled each epoch" in text


def test_table_artifact_rounds_to_4_significant_digits() -> None:
    rows = [{"method": "sgd", "lr": 0.123456, "loss": math.inf, "updates": 12345, "ok": True}]
    assert table_artifact(rows) == [
        {"method": "sgd", "lr": 0.1235, "loss": None, "updates": 12345, "ok": True}
    ]


def test_user_text_is_escaped_in_markdown() -> None:
    shown = markdown_text("<b>x</b> *y* _z_ [l](u) a|b `c`")
    assert shown == r"&lt;b&gt;x&lt;/b&gt; \*y\* \_z\_ \[l\](u) a\|b \`c\`"
