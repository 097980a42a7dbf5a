"""The parameter models: presets, defaults, the user's data option, cross-field checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.history import MethodResult
from tasks.params import Method, RunParams, SweepParams
from tasks.report.figure import build_figure, save_figure
from tasks.report.tables import comparison_markdown, loss_table, results_rows
from tasks.stats import moments
from tasks.training.methods import train


def test_the_data_option_is_checked_and_made_absolute() -> None:
    assert RunParams(data="  ").data is None
    assert RunParams(data="rel/file.parquet").data == os.path.abspath("rel/file.parquet")
    assert RunParams(data="s3://bucket/key.parquet").data == "s3://bucket/key.parquet"
    with pytest.raises(ValueError, match="two different columns"):
        RunParams(x_col="a", y_col="a")
    with pytest.raises(InputError, match="batch_size"):
        RunParams(data="f.parquet", batch_size=50).method_spec(Method.minibatch, rows=20)


def test_a_preset_fills_only_what_the_caller_did_not_set() -> None:
    tutorial = RunParams(preset="tutorial")
    assert tutorial.sgd_lr == 0.1
    assert tutorial.methods == [Method.bgd, Method.sgd]
    assert RunParams(preset="tutorial", sgd_lr=0.02).sgd_lr == 0.02
    with pytest.raises(ValueError, match="unknown preset"):
        RunParams(preset="fastest")


def test_the_fast_engine_and_sgd_always_train_on_the_cpu() -> None:
    params = RunParams(engine="reference", device="cuda")
    assert params.method_spec(Method.bgd).device == "cuda"
    assert params.method_spec(Method.sgd).device == "cpu"
    assert RunParams(device="cuda").method_spec(Method.bgd).device == "cpu"


def test_a_diverging_run_on_wide_data_completes_and_says_so(tmp_path) -> None:
    x = np.arange(-50, 50, dtype=np.float32)  # max x² = 2500: the default steps diverge
    y = (-2.0 * x + 3.0).astype(np.float32)
    params = RunParams(data="unused.parquet", dtype="float64")
    stats = moments(x, y)
    histories = [train(x, y, params.method_spec(m, x.size), stats) for m in params.methods]
    assert all(h.diverged for h in histories)
    assert any(not np.isfinite(h.loss).all() for h in histories)  # some overflow to inf/nan
    figure = build_figure(
        histories, x, y, stats, true_slope=-2.0, true_intercept=3.0, caption="wide data"
    )
    save_figure(figure, tmp_path / "f.png", tmp_path / "f.svg")
    for ax in figure.axes:
        assert np.isfinite([*ax.get_xlim(), *ax.get_ylim()]).all(), ax.get_title()
    results = [MethodResult.from_history(h, tmp_path / f"{h.method}.parquet") for h in histories]
    rows = results_rows(results, stats, -2.0, 3.0)
    table = comparison_markdown(rows, b"png", "caption", "wide data")
    assert "DIVERGED" in table.upper()
    assert "nan" in table or "overflow" in table
    cells = [v for row in loss_table(histories) for k, v in row.items() if k != "epoch"]
    assert all(v is None or np.isfinite(v) for v in cells)
    assert None in cells  # non-finite losses are left empty, not written as numbers


@pytest.mark.parametrize(
    "options",
    [
        {"x_start": -1e39},
        {"x_stop": 1e39},
        {"slope": 1e39},
        {"intercept": -1e39},
        {"noise_std": 1e38},  # draws of 4 standard deviations reach 4e38
        {"slope": 7e37},  # 3.5e38 at x = -5
        {"slope": 4e37, "intercept": 2e38, "noise_std": 1e36},
    ],
    ids=["x-start", "x-stop", "slope", "intercept", "noise-std", "slope-times-x", "sum"],
)
def test_synthetic_data_beyond_float32_are_refused(options: dict[str, float]) -> None:
    for model in (RunParams, SweepParams):
        with pytest.raises(ValueError, match=r"leave float32's range .*; lower --x-start"):
            model(**options)
