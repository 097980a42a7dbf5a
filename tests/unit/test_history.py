"""Stored histories: the same training writes the same bytes, and reads back as it was."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tasks.history import MethodResult, read_history, write_history
from tasks.params import Method
from tasks.storage import file_metadata, sha256_file
from tasks.training.methods import train
from tests.training_helpers import line_data, make_spec

CONTEXT = {"gdflow.dataset.sha256": "0" * 64, "gdflow.spec": "{}"}


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_history_written_twice_from_the_same_training_is_byte_identical(
    tmp_path, engine: str
) -> None:
    x, y = line_data(500, "float32")
    spec = make_spec(Method.sgd, 0.01, epochs=4, dtype="float32", engine=engine)
    first, second = train(x, y, spec), train(x, y, spec)
    a = write_history(first, tmp_path / "a.parquet", CONTEXT)
    b = write_history(second, tmp_path / "b.parquet", CONTEXT)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert a.sha256 == b.sha256
    again = write_history(second, tmp_path / "a.parquet", CONTEXT)
    assert again.sha256 == a.sha256 == sha256_file(tmp_path / "a.parquet")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_stored_history_reads_back_as_it_was_trained(tmp_path, dtype: str) -> None:
    x, y = line_data(300, dtype)
    history = train(x, y, make_spec(Method.sgd, 0.1, epochs=5, dtype=dtype))
    record = write_history(history, tmp_path / "h.parquet", CONTEXT)
    back = read_history(record)
    for column in ("epoch", "loss", "w", "b", "updates"):
        assert np.array_equal(getattr(back, column), getattr(history, column))
    for fact in ("method", "diverged", "reason", "stability_bound", "lr", "engine", "dtype"):
        assert getattr(back, fact) == getattr(history, fact)
    assert back.compute_dtype == history.compute_dtype
    assert back.extra == history.extra
    assert back.diverged
    assert back.wall_time_s is None
    metadata = file_metadata(tmp_path / "h.parquet")
    assert json.loads(metadata["gdflow.dtype"]) == dtype
    assert metadata["gdflow.dataset.sha256"] == CONTEXT["gdflow.dataset.sha256"]
    assert not any("wall" in key for key in metadata)


def test_a_method_result_summarises_its_history_and_names_its_file(tmp_path) -> None:
    x, y = line_data(200)
    history = train(x, y, make_spec(Method.minibatch, 0.02, epochs=3, batch_size=10))
    path = tmp_path / "h.parquet"
    write_history(history, path, CONTEXT)
    result = MethodResult.from_history(history, path)
    assert result.history == str(path)
    assert result.method == "minibatch"
    assert result.lr == 0.02
    assert (result.final_loss, result.final_w, result.final_b) == (
        history.loss[-1],
        history.w[-1],
        history.b[-1],
    )
    assert result.updates == 3 * 20
    assert result.wall_time_s == history.wall_time_s > 0.0
    assert (result.engine, result.dtype, result.diverged, result.reason) == (
        "fast",
        "float64",
        False,
        None,
    )
    assert result.stability_bound == history.stability_bound
    assert MethodResult.model_validate_json(result.model_dump_json()) == result


def test_a_method_result_holds_no_file_identity_and_survives_a_rewrite(tmp_path) -> None:
    x, y = line_data(100)
    history = train(x, y, make_spec(Method.bgd, 0.1))
    path = tmp_path / "h.parquet"
    write_history(history, path, CONTEXT)
    result = MethodResult.from_history(history, path)
    assert not {"sha256", "mtime_ns", "size"} & set(result.model_dump())
    write_history(history, path, CONTEXT)
    assert MethodResult.from_history(history, path) == result


def test_a_diverged_result_keeps_its_overflow_and_its_reason(tmp_path) -> None:
    x, y = line_data(100, "float32")
    history = train(x, y, make_spec(Method.sgd, 1e6, epochs=5, dtype="float32"))
    result = MethodResult.from_history(history, tmp_path / "h.parquet")
    assert result.diverged
    assert math.isnan(result.final_loss)
    assert "overflowed" in result.reason


def test_a_history_read_from_a_file_gives_no_result_without_its_wall_time(tmp_path) -> None:
    x, y = line_data(100)
    record = write_history(train(x, y, make_spec(Method.bgd, 0.1)), tmp_path / "h.parquet", {})
    with pytest.raises(ValueError, match="no wall time"):
        MethodResult.from_history(read_history(record), record.path)
