"""The fast engine's composed maps against plain loops, the reference at 10^6 rows, progress,
devices and scikit-learn's SGD."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from tasks.errors import InputError
from tasks.params import Method, RunParams
from tasks.stats import moments
from tasks.training import kernels, shuffle
from tasks.training.kernels import batch_pass, point_pass, warm_up
from tasks.training.methods import train, train_visits
from tasks.training.reference import check_device
from tasks.training.visits import aligned, array_visits, stream_visits
from tests.training_helpers import NO_CUDA, line_data, make_spec


def sequential(
    x: np.ndarray, y: np.ndarray, lr: float, epochs: int, batch: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-point SGD (batch 1) or mini-batch descent one update at a time, in the fast engine's
    arithmetic and stopping rule.

    Returns (w, b) after each epoch (NaN once stopped) and the number of updates made.
    """
    stats = moments(x, y)
    ws, bs = np.full((2, epochs + 1), np.nan)
    ws[0], bs[0], made = -10.0, -20.0, 0
    for e in range(epochs):
        with np.errstate(over="ignore"):
            start_loss = stats.mse(ws[e], bs[e])
        if not np.isfinite(start_loss):
            break
        if batch == 1:
            w, b, done = point_pass(x, y, ws[e], bs[e], lr)
        else:
            w, b, done = batch_pass(x, y, ws[e], bs[e], lr, batch)
        made += done
        if not (np.isfinite(w) and np.isfinite(b)):
            break
        ws[e + 1], bs[e + 1] = w, b
    return ws, bs, made


@pytest.mark.parametrize("n", [5_000, 300_001])
def test_composed_sgd_equals_the_update_by_update_loop(n: int) -> None:
    x, y = line_data(n, "float32", seed=2)
    lr = 0.005
    history = train(x, y, make_spec(Method.sgd, lr, epochs=4, dtype="float32"))
    ws, bs, made = sequential(x, y, lr, 4)
    # Composed maps round differently from the loop: about 2e-12 here and 2e-11 after one
    # epoch at 10^7 rows, well inside the 1e-9 the engines promise against the reference.
    np.testing.assert_allclose(history.w, ws, rtol=1e-10)
    np.testing.assert_allclose(history.b, bs, rtol=1e-10, atol=1e-12)
    assert history.updates[-1] == made == 4 * n


# Step sizes past the SGD bound 1/26 (no composition: update by update): growth without
# overflow; overflow of the loss at an epoch start; of the parameters within an epoch.
@pytest.mark.parametrize(("lr", "finite_rows"), [(0.045, 41), (0.06, 2), (0.1, 1), (50.0, 1)])
def test_divergent_sgd_stops_where_the_update_by_update_loop_does(
    lr: float, finite_rows: int
) -> None:
    x, y = line_data(3_000)
    history = train(x, y, make_spec(Method.sgd, lr, epochs=40))
    ws, bs, made = sequential(x, y, lr, 40)
    assert history.diverged
    assert np.isfinite(history.loss).sum() == finite_rows
    assert history.updates[-1] == made
    assert np.array_equal(history.w, ws, equal_nan=True)
    assert np.array_equal(history.b, bs, equal_nan=True)


# Past the mini-batch bound (about 0.038 for batches of 10 here) maps expand, and composing
# them would round differently: every epoch runs update by update, as the loop does.
@pytest.mark.parametrize("lr", [0.045, 0.1, 50.0])
def test_divergent_minibatch_runs_update_by_update_like_the_loop(lr: float) -> None:
    x, y = line_data(3_000)
    history = train(x, y, make_spec(Method.minibatch, lr, epochs=40, batch_size=10))
    ws, bs, made = sequential(x, y, lr, 40, batch=10)
    assert lr > history.stability_bound
    assert history.updates[-1] == made
    assert np.array_equal(history.w, ws, equal_nan=True)
    assert np.array_equal(history.b, bs, equal_nan=True)


def test_aligned_pieces_survive_a_reused_buffer() -> None:
    x = np.arange(100, dtype=np.float32)
    buffer = np.empty(30, dtype=np.float32)

    def pieces():
        for lo in range(0, 100, 30):
            buffer[: min(30, 100 - lo)] = x[lo : lo + 30]
            yield buffer[: min(30, 100 - lo)], buffer[: min(30, 100 - lo)]

    out = [p[0].copy() for p in aligned(pieces(), 8)]
    assert np.array_equal(np.concatenate(out), x)


def test_aligned_pieces_keep_every_point_in_order() -> None:
    x = np.arange(100, dtype=np.float32)
    pieces = [(x[lo:hi], -x[lo:hi]) for lo, hi in [(0, 13), (13, 14), (14, 60), (60, 100)]]
    out = list(aligned(pieces, 8))
    assert all(p[0].shape[0] % 8 == 0 for p in out[:-1])
    assert np.array_equal(np.concatenate([p[0] for p in out]), x)
    assert np.array_equal(np.concatenate([p[1] for p in out]), -x)


@pytest.mark.parametrize(
    ("method", "batch_size", "lr"),
    [(Method.sgd, 1, 0.01), (Method.minibatch, 7, 0.01), (Method.sgd, 1, 0.06)],
    ids=["sgd", "minibatch", "sgd-update-by-update"],
)
def test_streamed_pieces_give_the_in_memory_history_exactly(
    method: Method, batch_size: int, lr: float
) -> None:
    x, y = line_data(50_001, "float32", seed=8)
    spec = make_spec(method, lr, epochs=5, batch_size=batch_size, dtype="float32")
    cuts = [0, 999, 17_000, 17_001, 40_000, 50_001]

    def read():
        return ((x[lo:hi], y[lo:hi]) for lo, hi in pairwise(cuts))

    whole = train(x, y, spec)
    streamed = train_visits(stream_visits(x.shape[0], read), spec, moments(x, y))
    for column in ("loss", "w", "b", "updates"):
        assert np.array_equal(getattr(streamed, column), getattr(whole, column), equal_nan=True)
    assert streamed.stability_bound == whole.stability_bound


def test_training_on_pieces_read_from_a_file_compiles_nothing_after_warm_up() -> None:
    """Pieces read from a file are read-only arrays; compiling for them would be timed."""
    warm_up("float32")
    compiled = [kernels.point_maps, kernels.batch_maps, kernels.point_pass, kernels.batch_pass]
    before = [len(k.signatures) for k in compiled]
    x, y = line_data(5_000, "float32")
    x.flags.writeable = y.flags.writeable = False

    def read():
        return ((x[lo : lo + 999], y[lo : lo + 999]) for lo in range(0, 5_000, 999))

    for method, lr, batch_size in [
        (Method.sgd, 0.01, 1),
        (Method.sgd, 0.06, 1),
        (Method.minibatch, 0.01, 7),
    ]:
        spec = make_spec(method, lr, epochs=2, batch_size=batch_size, dtype="float32")
        train_visits(stream_visits(5_000, read), spec, moments(x, y))
    assert [len(k.signatures) for k in compiled] == before


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_progress_is_reported_about_every_tenth_of_the_epochs(engine: str) -> None:
    x, y = line_data(200)
    calls: list[tuple[int, float]] = []
    spec = make_spec(Method.minibatch, 0.02, epochs=50, batch_size=10, engine=engine)
    history = train(x, y, spec, progress=lambda e, loss: calls.append((e, loss)))
    assert [e for e, _ in calls] == list(range(5, 51, 5))
    for e, loss in calls:
        assert loss == pytest.approx(history.loss[e], rel=1e-9)


def test_bgd_never_reads_the_data() -> None:
    x, y = line_data(1_000)

    def unreadable():
        raise AssertionError("batch gradient descent read the data")

    history = train_visits(
        stream_visits(1_000, unreadable), make_spec(Method.bgd, 0.1), moments(x, y)
    )
    assert np.array_equal(history.w, train(x, y, make_spec(Method.bgd, 0.1)).w)


def test_shuffled_training_compiles_nothing_after_its_visits_warm_up() -> None:
    """Setting up shuffled visits, before the clock starts, loads every kernel an epoch runs."""
    x, y = line_data(5_000, "float32")
    x.flags.writeable = y.flags.writeable = False
    compiled = [kernels.point_maps, kernels.batch_maps, kernels.point_pass, kernels.batch_pass]
    compiled += [shuffle.scatter, shuffle.fisher_yates]
    for method, lr, batch_size in [
        (Method.sgd, 0.01, 1),
        (Method.sgd, 0.06, 1),
        (Method.minibatch, 0.01, 7),
    ]:
        spec = make_spec(method, lr, epochs=2, batch_size=batch_size, dtype="float32")
        spec = spec.model_copy(update={"shuffle": True})
        visits = array_visits(x, y, spec)
        before = [len(k.signatures) for k in compiled]
        train_visits(visits, spec, moments(x, y), batch_lambda=1.0)
        assert [len(k.signatures) for k in compiled] == before


COMPARED_AT_SCALE = [
    (Method.bgd, 0.1, 1, False, "float64", 5),
    (Method.bgd, 0.1, 1, False, "float32", 5),
    (Method.minibatch, 0.02, 100, False, "float64", 1),
    (Method.minibatch, 0.02, 70, True, "float32", 1),
    (Method.minibatch, 0.02, 70, True, "float64", 2),
    (Method.sgd, 0.01, 1, False, "float64", 1),
    (Method.sgd, 0.01, 1, False, "float32", 1),
]
# docs/performance.md's promise at 10^6 rows. In float32 the reference rounds each of its
# sequential updates, and the roundings add up with their number: measured worst 6e-7 (BGD),
# 3.5e-5 (mini-batch) and 1.6e-4 (SGD, 10 epochs; 5.8e-5 for the one epoch here).
FLOAT32_AT_SCALE = {Method.bgd: 1e-5, Method.minibatch: 1e-4, Method.sgd: 1e-3}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "lr", "batch_size", "shuffle", "dtype", "epochs"), COMPARED_AT_SCALE
)
def test_fast_engine_equals_reference_at_a_million_rows(
    method: Method, lr: float, batch_size: int, shuffle: bool, dtype: str, epochs: int
) -> None:
    x, y = line_data(1_000_000, dtype, seed=6)
    rtol = 1e-9 if dtype == "float64" else FLOAT32_AT_SCALE[method]
    kw = {"batch_size": batch_size, "shuffle": shuffle, "shuffle_seed": 2, "dtype": dtype}
    fast = train(x, y, make_spec(method, lr, epochs, engine="fast", **kw))
    ref = train(x, y, make_spec(method, lr, epochs, engine="reference", **kw))
    assert np.array_equal(fast.updates, ref.updates)
    for got, want in [(fast.loss, ref.loss), (fast.w, ref.w), (fast.b, ref.b)]:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_sklearn_sgd_regressor_follows_the_same_iterates() -> None:
    """The benchmark's scikit-learn anchor, set up as the benchmark does, takes our steps."""
    pytest.importorskip("sklearn.linear_model")
    from benchmarks.training import sgd_regressor

    x, y = line_data(20_000, seed=9)
    lr = 0.005
    model = sgd_regressor(lr, -10.0, -20.0, x, y)
    history = train(x, y, make_spec(Method.sgd, lr, epochs=2))
    for epoch in (1, 2):
        model.partial_fit(x[:, None], y)
        assert model.coef_[0] == pytest.approx(history.w[epoch], rel=1e-12)
        assert model.intercept_[0] == pytest.approx(history.b[epoch], rel=1e-12)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_one_is_a_clear_error() -> None:
    with pytest.raises(
        InputError, match="torch sees no CUDA device on this machine; use --device cpu"
    ):
        check_device("cuda")
    spec = make_spec(Method.bgd, 0.1, engine="reference", device="cuda")
    with pytest.raises(InputError, match="use --device cpu"):
        train(*line_data(10), spec)


def test_cpu_is_always_a_device() -> None:
    check_device("cpu")


def test_only_the_reference_engine_leaves_the_cpu_and_never_for_sgd() -> None:
    reference = RunParams(device="cuda", engine="reference")
    assert reference.method_spec(Method.sgd).device == "cpu"
    assert reference.method_spec(Method.minibatch).device == "cuda"
    assert reference.method_spec(Method.bgd).device == "cuda"
    fast = RunParams(device="cuda")
    assert {fast.method_spec(m).device for m in Method} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize(("method", "batch_size"), [(Method.bgd, 1), (Method.minibatch, 10)])
def test_cuda_gives_the_cpu_history(method: Method, batch_size: int) -> None:
    x, y = line_data(100_000, seed=1)
    spec = make_spec(method, 0.02, epochs=3, batch_size=batch_size, engine="reference")
    on_cpu = train(x, y, spec)
    on_gpu = train(x, y, spec.model_copy(update={"device": "cuda"}))
    for column in ("loss", "w", "b"):
        np.testing.assert_allclose(getattr(on_gpu, column), getattr(on_cpu, column), rtol=1e-9)
