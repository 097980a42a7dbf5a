"""The fast engine's composed maps against plain loops, the reference at 10^6 rows, progress,
devices and scikit-learn's SGD."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from tasks import kernels
from tasks.kernels import batch_maps_torch, epoch_maps
from tasks.params import Method, RunParams
from tasks.stats import moments
from tasks.training import aligned, array_visits, stream_visits, train, train_visits
from tests.test_training import line_data, make_spec

NO_CUDA = "needs a CUDA device that torch can see (--device cuda); this machine has none"


def sequential_sgd(
    x: np.ndarray, y: np.ndarray, lr: float, epochs: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-point SGD one update at a time, in the fast engine's arithmetic and stopping rule.

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
        w, b, done = kernels._point_pass(x, y, ws[e], bs[e], lr)
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
    ws, bs, made = sequential_sgd(x, y, lr, 4)
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
    ws, bs, made = sequential_sgd(x, y, lr, 40)
    assert history.diverged
    assert np.isfinite(history.loss).sum() == finite_rows
    assert history.updates[-1] == made
    assert np.array_equal(history.w, ws, equal_nan=True)
    assert np.array_equal(history.b, bs, equal_nan=True)


def test_minibatch_maps_agree_with_torch_on_the_cpu() -> None:
    x, y = line_data(10_007, seed=4)
    spec = make_spec(Method.minibatch, 0.02, batch_size=7)
    maps, lam = epoch_maps([(x, y)], x.shape[0], spec)
    per_map = kernels.map_points(spec) // 7
    torch_maps, torch_lam = batch_maps_torch(
        torch.from_numpy(x), torch.from_numpy(y), 0.02, 7, per_map
    )
    np.testing.assert_allclose(torch_maps, maps, rtol=1e-11, atol=1e-13)
    assert torch_lam == pytest.approx(lam, rel=1e-12)


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


def test_shuffled_visits_gather_each_epoch_in_its_order() -> None:
    x, y = line_data(5_000)
    spec = make_spec(Method.sgd, 0.01, shuffle=True, shuffle_seed=3)
    visits = array_visits(x, y, spec)
    (first, _), *_ = visits.chunks(1, 1024)
    assert not visits.fixed
    assert np.array_equal(np.sort(first), np.sort(x))
    assert not np.array_equal(first, x)


COMPARED_AT_SCALE = [
    (Method.bgd, 0.1, 1, False, "float64", 5),
    (Method.bgd, 0.1, 1, False, "float32", 5),
    (Method.minibatch, 0.02, 100, False, "float64", 1),
    (Method.minibatch, 0.02, 70, True, "float32", 1),
    (Method.sgd, 0.01, 1, False, "float64", 1),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "lr", "batch_size", "shuffle", "dtype", "epochs"), COMPARED_AT_SCALE
)
def test_fast_engine_equals_reference_at_a_million_rows(
    method: Method, lr: float, batch_size: int, shuffle: bool, dtype: str, epochs: int
) -> None:
    x, y = line_data(1_000_000, dtype, seed=6)
    rtol = 1e-9 if dtype == "float64" else 1e-5
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
        ValueError, match="torch sees no CUDA device on this machine; use --device cpu"
    ):
        RunParams(device="cuda")


def test_sgd_runs_on_the_cpu_whatever_the_device() -> None:
    params = RunParams.model_construct(**{**RunParams().model_dump(), "device": "cuda"})
    assert params.method_spec(Method.sgd).device == "cpu"
    assert params.method_spec(Method.minibatch).device == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize(("method", "batch_size"), [(Method.bgd, 1), (Method.minibatch, 10)])
def test_cuda_gives_the_cpu_history(engine: str, method: Method, batch_size: int) -> None:
    x, y = line_data(100_000, seed=1)
    spec = make_spec(method, 0.02, epochs=3, batch_size=batch_size, engine=engine)
    on_cpu = train(x, y, spec)
    on_gpu = train(x, y, spec.model_copy(update={"device": "cuda"}))
    for column in ("loss", "w", "b"):
        np.testing.assert_allclose(getattr(on_gpu, column), getattr(on_cpu, column), rtol=1e-9)
