"""Data at scale: verified loads shared in memory, streamed training, progress reports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from prefect import flow
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker

from tasks import fitting, training
from tasks.dataset import DatasetRef, generate, load_columns, stream_columns, write_dataset
from tasks.fitting import fit, streams, train_method
from tasks.history import read_history
from tasks.params import DataSpec, Method, MethodSpec
from tasks.storage import CorruptFileError, FileRecord

SPEC = DataSpec(n_samples=2_200_000, seed=3)  # three row groups, the last one short


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    return write_dataset(SPEC, tmp_path_factory.mktemp("data") / "d.parquet")


def method(name: Method, **kw: object) -> MethodSpec:
    batch = 10 if name is Method.minibatch else 1
    fields = {"lr": 0.01, "epochs": 4, "w0": -10.0, "b0": -20.0, "batch_size": batch}
    return MethodSpec(method=name, **fields | kw)


def damaged_copy(record: FileRecord, target: Path) -> FileRecord:
    """A copy of the file with one byte flipped, described by the original's record."""
    data = bytearray(Path(record.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return record.model_copy(update={"path": str(target)})


def test_loads_are_verified_and_share_one_copy(dataset: DatasetRef) -> None:
    x, y = load_columns(dataset.file)
    again, _ = load_columns(dataset.file)
    assert np.shares_memory(x, again)
    want_x, want_y = generate(SPEC)
    assert np.array_equal(x, want_x)
    assert np.array_equal(y, want_y)
    pieces = list(stream_columns(dataset.file))
    assert len(pieces) > 1
    assert np.array_equal(np.concatenate([p[1] for p in pieces]), want_y)


@pytest.mark.parametrize("read", [load_columns, lambda r: list(stream_columns(r))])
def test_a_damaged_file_is_refused_by_loads_and_streams(dataset, tmp_path, read) -> None:
    with pytest.raises(CorruptFileError, match="changed since it was written"):
        read(damaged_copy(dataset.file, tmp_path / "bad.parquet"))


def test_a_file_changed_after_a_verified_read_is_checked_again(dataset, tmp_path) -> None:
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(Path(dataset.file.path).read_bytes())
    record = dataset.file.model_copy(update={"path": str(copy)})
    assert len(list(stream_columns(record))) > 1
    damaged_copy(record, copy)
    os.utime(copy, ns=(1, 1))
    with pytest.raises(CorruptFileError):
        list(stream_columns(record))


@pytest.mark.parametrize(
    "spec",
    [method(Method.sgd), method(Method.minibatch), method(Method.bgd, lr=0.1, batch_size=10)],
    ids=["sgd", "minibatch", "bgd"],
)
def test_streaming_fit_equals_in_memory_fit(dataset, tmp_path, monkeypatch, spec) -> None:
    in_memory = read_history(fit(dataset, spec, tmp_path / "a.parquet").file)
    monkeypatch.setattr(training, "IN_MEMORY_BYTES", 1 << 20)
    assert streams(dataset, spec)
    streamed = read_history(fit(dataset, spec, tmp_path / "b.parquet").file)
    for column in ("loss", "w", "b", "updates"):
        assert np.array_equal(getattr(streamed, column), getattr(in_memory, column))


def test_shuffled_and_reference_runs_hold_the_data_in_memory(dataset, monkeypatch) -> None:
    monkeypatch.setattr(training, "IN_MEMORY_BYTES", 1 << 20)
    assert not streams(dataset, method(Method.sgd, shuffle=True))
    assert not streams(dataset, method(Method.sgd, engine="reference"))
    assert streams(dataset, method(Method.bgd, shuffle=True))


@pytest.mark.usefixtures("prefect_api")
def test_training_logs_progress_and_publishes_a_progress_artifact(
    dataset, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(fitting, "SHOW_PROGRESS_AFTER_S", 0.0)

    @flow
    def train_one() -> None:
        uncached = train_method.with_options(cache_policy=NO_CACHE, persist_result=False)
        uncached(dataset, method(Method.sgd, epochs=20), str(tmp_path))

    state = train_one(return_state=True)
    assert state.is_completed()
    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-sgd-progress"]))
        )
    lines = [log.message for log in logs if log.message.startswith("sgd: epoch")]
    assert lines[0].startswith("sgd: epoch 2/20 (10%), loss ")
    assert lines[-1].startswith("sgd: epoch 20/20 (100%), loss ")
    assert len(lines) == 10
    mine = [a for a in artifacts if a.flow_run_id == run_id]
    assert [a.type for a in mine] == ["progress"]
    assert mine[0].data == 100.0
