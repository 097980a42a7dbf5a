"""The sweep's grid and report: cells, epochs to target, the folded grid, markdown, files."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest
from matplotlib.text import Text
from pydantic import ValidationError

from tasks.history import History, MethodResult
from tasks.params import Cell, Method, RunParams, SweepParams
from tasks.report.sweep_figure import batch_label, best_curves, build_sweep_figure
from tasks.report.sweep_tables import (
    HISTORY_SCHEMA,
    best_rows,
    cell_rows,
    epochs_to_target,
    floor_loss,
    history_batches,
    summarise,
    sweep_caption,
    sweep_markdown,
)
from tasks.stats import moments


def _history(loss: list[float], lr: float = 0.1, diverged: bool = False) -> History:
    n = len(loss)
    return History(
        method="bgd",
        epoch=np.arange(n),
        loss=np.array(loss, dtype=float),
        w=np.zeros(n),
        b=np.zeros(n),
        updates=np.arange(n),
        diverged=diverged,
        reason="grew" if diverged else None,
        stability_bound=0.12,
        lr=lr,
        engine="fast",
        dtype="float32",
        compute_dtype="float64",
        wall_time_s=0.0,
    )


def _rows(
    cells: list[Cell], histories: list[History], floors: dict[int, float]
) -> list[dict[str, Any]]:
    results = [
        MethodResult.from_history(h, f"/h/{c.label}.parquet")
        for c, h in zip(cells, histories, strict=True)
    ]
    return cell_rows(cells, results, histories, floors)


def _grid() -> tuple[list[Cell], list[History]]:
    """Two seeds x three step sizes of BGD; the largest step diverges on seed 1."""
    cells = [
        Cell(seed=s, batch_size=100, lr=lr, method=Method.bgd)
        for s in (0, 1)
        for lr in (0.01, 0.1, 0.2)
    ]
    losses = {0.01: [11.0, 5.0], 0.1: [11.0, 1.5], 0.2: [11.0, 1e9]}
    histories = [_history(losses[c.lr], c.lr, diverged=c.lr == 0.2 and c.seed == 1) for c in cells]
    return cells, histories


# --- the grid ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "method", "lr"),
    [(1, Method.sgd, 0.01), (10, Method.minibatch, 0.02), (100, Method.bgd, 0.1)],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_cell_is_the_same_training_run_as_gdflow_run(batch_size, method, lr, shuffle) -> None:
    sweep = SweepParams(shuffle=shuffle, epochs=7, w0=1.5)
    run = RunParams(shuffle=shuffle, epochs=7, w0=1.5, seed=3)
    assert sweep.method_spec(lr, batch_size) == run.method_spec(method)
    assert sweep.data_spec(3) == run.data_spec()


def test_grid_covers_every_step_size_batch_size_and_seed() -> None:
    params = SweepParams(
        lrs=[0.1, 0.01, 0.1], batch_sizes=["n", 5, 1, 5], seeds=[2, 0], n_samples=50
    )
    assert params.lrs == [0.01, 0.1]
    assert params.batch_sizes == [1, 5, 50]
    cells = params.cells()
    assert len(cells) == 2 * 3 * 2
    assert len(set(cells)) == len(cells)
    assert {c.batch_size: c.method for c in cells} == {
        1: Method.sgd,
        5: Method.minibatch,
        50: Method.bgd,
    }
    assert [c.seed for c in cells[:6]] == [2] * 6


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"batch_sizes": [1, 101]}, "larger than n_samples"),
        ({"lrs": [0.0]}, "lrs"),
        ({"lrs": []}, "lrs"),
        ({"seeds": [-1]}, "seeds"),
        ({"sgd_lr": 0.1}, "sgd_lr"),
        ({"data": "points.parquet"}, "data"),
    ],
)
def test_bad_sweeps_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SweepParams(**fields)


# --- the report's tables ----------------------------------------------------------------


def test_floor_loss_is_the_least_squares_mse() -> None:
    x = np.linspace(-1.0, 1.0, 50)
    y = 2.0 * x + 1.0 + np.where(np.arange(50) % 2, 0.1, -0.1)
    slope, intercept = np.polyfit(x, y, 1)  # an independent least-squares fit
    residual = y - (slope * x + intercept)
    assert floor_loss(moments(x, y)) == pytest.approx(np.mean(residual**2), rel=1e-9)


def test_epochs_to_target_is_the_first_epoch_a_thousand_times_closer() -> None:
    floor = 1.0
    assert epochs_to_target(_history([1001.0, 100.0, 2.5, 1.5, 1.0005]), floor) == 3
    assert epochs_to_target(_history([1001.0, 100.0, 2.5]), floor) is None
    assert epochs_to_target(_history([1001.0, 1.0, 1e9], diverged=True), floor) is None


def test_cell_rows_are_json_safe_and_carry_the_result() -> None:
    cells = [Cell(seed=0, batch_size=1, lr=0.5, method=Method.sgd)]
    h = _history([3.0, np.inf], lr=0.5, diverged=True)
    (row,) = _rows(cells, [h], {0: 1.0})
    assert (row["method"], row["lr"], row["batch_size"], row["seed"]) == ("sgd", 0.5, 1, 0)
    assert (row["final_loss"], row["excess_loss"], row["epochs_to_target"]) == (None, None, None)
    assert (row["diverged"], row["updates"], row["stability_bound"]) == (True, 1, 0.12)


def test_summary_folds_seeds_marks_divergence_and_picks_the_best_step() -> None:
    summary = summarise(_rows(*_grid(), {0: 1.0, 1: 1.0}))
    assert summary.lrs == [0.01, 0.1, 0.2]
    assert summary.seeds == 2
    assert summary.diverged[:, 0].tolist() == [0, 0, 1]
    assert summary.excess[0, 0] == pytest.approx(4.0)
    assert np.isnan(summary.excess[2, 0])  # one seed of two diverged: the cell is marked
    assert summary.best == [1]
    assert summary.bounds.tolist() == [0.12]


def test_summary_epochs_are_the_median_over_seeds_unless_one_never_got_there() -> None:
    cells = [
        Cell(seed=s, batch_size=100, lr=lr, method=Method.bgd) for s in (0, 1) for lr in (0.1, 0.2)
    ]
    losses = {  # floor 1: the target is an excess loss of 0.01
        (0, 0.1): [11.0, 1.005, 1.0],  # reached at epoch 1
        (1, 0.1): [11.0, 2.0, 1.001],  # reached at epoch 2
        (0, 0.2): [11.0, 1.005, 1.0],
        (1, 0.2): [11.0, 2.0, 1.5],  # never reached
    }
    histories = [_history(losses[c.seed, c.lr], c.lr) for c in cells]
    summary = summarise(_rows(cells, histories, {0: 1.0, 1: 1.0}))
    assert summary.epochs[0, 0] == 1.5
    assert np.isnan(summary.epochs[1, 0])
    assert summary.diverged.dtype == np.int64
    assert summary.diverged.tolist() == [[0], [0]]


def test_best_rows_name_the_best_step_and_where_it_diverged() -> None:
    (best,) = best_rows(summarise(_rows(*_grid(), {0: 1.0, 1: 1.0})))
    assert (best["batch_size"], best["method"], best["best_lr"]) == (100, "bgd", 0.1)
    assert best["excess_loss"] == pytest.approx(0.5)
    assert best["diverged_lrs"] == [0.2]
    assert best["stability_bound"] == 0.12


def test_markdown_embeds_the_figure_and_names_every_batch_size() -> None:
    cells = [Cell(seed=0, batch_size=b, lr=0.1, method=Method.bgd) for b in (10, 100)]
    rows = _rows(cells, [_history([11.0, 2.0]), _history([11.0, 3.0])], {0: 1.0})
    best = [{**r, "best_lr": r["lr"], "diverged_lrs": []} for r in rows]
    text = sweep_markdown(best, rows, b"\x89PNG fake", "the caption", "/x/histories.parquet")
    assert "![the caption](data:image/png;base64," in text
    assert text.count("the caption") == 1  # the figure shows it
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table[0].split(" | ")) <= 7
    assert "| 10 | bgd | 0.1 | 1 | — |" in text  # 4 significant digits; never reached
    assert "| 100 | bgd | 0.1 |" in text
    assert "0 of 2 runs diverged" in text
    assert "/x/histories.parquet" in text


def test_sweep_caption_counts_the_grid() -> None:
    text = sweep_caption(SweepParams(seeds=[4], shuffle=True))
    assert "7 step sizes × 7 batch sizes × 1 seed ·" in text
    assert "seed 4 ·" in text
    assert "shuffled each epoch" in text
    assert "seeds 0, 1, 2" in sweep_caption(SweepParams())


def test_history_batches_tag_every_epoch_with_its_cell() -> None:
    cells = [Cell(seed=4, batch_size=1, lr=0.05, method=Method.sgd)]
    (batch,) = history_batches(cells, [_history([3.0, 2.0, 1.0], diverged=True)])
    assert batch.schema == HISTORY_SCHEMA
    table = batch.to_pydict()
    assert table["seed"] == [4, 4, 4]
    assert table["method"] == ["sgd"] * 3
    assert table["lr"] == [0.05] * 3
    assert table["batch_size"] == [1] * 3
    assert table["epoch"] == [0, 1, 2]
    assert table["loss"] == [3.0, 2.0, 1.0]
    assert table["diverged"] == [True] * 3


# --- the figure -------------------------------------------------------------------------


def test_best_curves_are_the_best_step_of_each_batch_size_on_one_seed() -> None:
    cells, histories = _grid()
    summary = summarise(_rows(cells, histories, {0: 1.0, 1: 1.0}))
    for seed, best in ((0, 1), (1, 4)):  # step 0.1 on each seed
        curves = best_curves(cells, histories, summary, seed)
        assert list(curves) == [100]
        assert curves[100] is histories[best]


def test_sweep_figure_marks_divergence_and_draws_without_warnings() -> None:
    cells, histories = _grid()
    summary = summarise(_rows(cells, histories, {0: 1.0, 1: 1.0}))
    curves = best_curves(cells, histories, summary, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = build_sweep_figure(summary, curves, 1.0, 0, "the caption")
        fig.savefig(io.BytesIO(), format="png")
    text = "\n".join(t.get_text() for t in fig.findobj(Text))
    assert "diverged\n1/2" in text
    assert "the caption" in text
    assert batch_label(100, Method.bgd, 0.12) in text
    ticks = [t.get_text() for ax in fig.axes for t in ax.yaxis.get_ticklabels(which="both")]
    assert any("10⁻" in t for t in ticks)
    assert not [t for t in ticks if t.startswith("$")]  # no mathtext to parse
    curves_ax = fig.axes[1]
    assert curves_ax.get_yscale() == "log"
    assert curves_ax.get_lines()[0].get_label() == "batch 100 (BGD), step 0.1"


def test_sweep_figure_says_so_when_every_run_diverged() -> None:
    cells = [Cell(seed=0, batch_size=1, lr=0.5, method=Method.sgd)]
    histories = [_history([3.0, 1e9], lr=0.5, diverged=True)]
    summary = summarise(_rows(cells, histories, {0: 1.0}))
    assert summary.best == [None]
    fig = build_sweep_figure(summary, best_curves(cells, histories, summary, 0), 1.0, 0, "")
    fig.savefig(io.BytesIO(), format="png")
    assert "every run diverged" in "\n".join(t.get_text() for t in fig.findobj(Text))
