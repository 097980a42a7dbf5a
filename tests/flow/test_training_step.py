"""Training a stored data set: streamed or in memory, and the training step's progress."""

from __future__ import annotations

from functools import partial

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

from tasks.data.dataset import DatasetRef, load_columns, stream_columns
from tasks.data.synthetic import write_synthetic
from tasks.params import Method, MethodSpec
from tasks.steps import training
from tasks.training import visits
from tasks.training.methods import train_stored
from tasks.training.visits import streams_rows
from tests.specs import data_spec
from tests.training_helpers import make_spec

SPEC = data_spec(n_samples=2_200_000, seed=3)  # three row groups, the last one short


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetRef:
    return write_synthetic(SPEC, tmp_path_factory.mktemp("data") / "d.parquet")


def method(name: Method, **kw: object) -> MethodSpec:
    batch = 10 if name is Method.minibatch else 1
    fields = {"lr": 0.01, "epochs": 4, "batch_size": batch, "dtype": "float32"}
    return make_spec(name, **fields | kw)


def trained(dataset: DatasetRef, spec: MethodSpec):
    return train_stored(
        dataset.file.rows,
        partial(stream_columns, dataset.file),
        partial(load_columns, dataset.file),
        spec,
        dataset.stats(),
    )


@pytest.mark.parametrize(
    "spec",
    [method(Method.sgd), method(Method.minibatch), method(Method.bgd, lr=0.1, batch_size=10)],
    ids=["sgd", "minibatch", "bgd"],
)
def test_streaming_training_equals_in_memory_training(dataset, monkeypatch, spec) -> None:
    in_memory = trained(dataset, spec)
    monkeypatch.setattr(visits, "IN_MEMORY_BYTES", 1 << 20)
    assert streams_rows(dataset.file.rows, spec)
    streamed = trained(dataset, spec)
    for column in ("loss", "w", "b", "updates"):
        assert np.array_equal(getattr(streamed, column), getattr(in_memory, column))


def test_shuffled_and_reference_runs_hold_the_data_in_memory(dataset, monkeypatch) -> None:
    monkeypatch.setattr(visits, "IN_MEMORY_BYTES", 1 << 20)
    rows = dataset.file.rows
    assert not streams_rows(rows, method(Method.sgd, shuffle=True))
    assert not streams_rows(rows, method(Method.sgd, engine="reference"))
    assert streams_rows(rows, method(Method.bgd, shuffle=True))


@pytest.mark.usefixtures("prefect_api")
def test_training_logs_progress_and_publishes_a_progress_artifact(
    dataset, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(training, "SHOW_PROGRESS_AFTER_S", 0.0)

    @flow
    def train_one() -> None:
        uncached = training.train_method.with_options(cache_policy=NO_CACHE, persist_result=False)
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
