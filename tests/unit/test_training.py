"""Training: the pure functions, the engines' contract, and fast == reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tasks.params import Method
from tasks.stats import moments
from tasks.training.divergence import DIVERGENCE_FACTOR, divergence_reason, stability_bound
from tasks.training.methods import in_order_batch_lambda, train
from tasks.training.visits import epoch_order
from tests.training_helpers import line_data, make_spec

ENGINES = ["fast", "reference"]


def test_fast_loss_from_moments_matches_direct_mean_even_near_the_optimum() -> None:
    rng = np.random.default_rng(3)
    x = 1e4 + rng.uniform(-1.0, 1.0, 5000)  # far from zero, so raw sums would cancel badly
    y = 3.0 * x - 7.0 + 0.4 * rng.standard_normal(5000)
    w_opt, b_opt = np.polyfit(x, y, 1)
    for w, b in [(w_opt, b_opt), (w_opt + 1e-6, b_opt), (3.0, -7.0), (0.0, 0.0), (-2.0, 5.0)]:
        spec = make_spec(Method.bgd, 1e-12, epochs=1, w0=w, b0=b)
        loss = train(x, y, spec).loss[0]
        direct = np.mean((w * x + b - y) ** 2)
        assert loss == pytest.approx(direct, rel=1e-9)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    first = epoch_order(50, 7, 3)
    assert np.array_equal(np.sort(first), np.arange(50))
    assert np.array_equal(first, epoch_order(50, 7, 3))
    assert not np.array_equal(first, epoch_order(50, 7, 4))
    assert not np.array_equal(first, epoch_order(50, 8, 3))


def test_bounds_equal_hand_values_on_tiny_data() -> None:
    x = np.array([3.0, 1.0, 2.0])
    stats = moments(x, x)
    # BGD: E x² = 14/3, E x = 2, so λmax(H) = (17 + √265)/3.
    assert stability_bound(make_spec(Method.bgd, 0.1), stats) == pytest.approx(
        6.0 / (17.0 + math.sqrt(265.0)), rel=1e-12
    )
    assert stability_bound(make_spec(Method.sgd, 0.1), stats) == pytest.approx(0.1, rel=1e-12)
    # Batches [3, 1] and [2]: the first, with H = 2·[[5, 2], [2, 1]], bounds it at 3 - 2√2.
    spec = make_spec(Method.minibatch, 0.1, batch_size=2)
    bound = stability_bound(spec, stats, in_order_batch_lambda(x, x, spec))
    assert bound == pytest.approx(3.0 - 2.0 * math.sqrt(2.0), rel=1e-12)


def test_bounds_on_tutorial_shaped_data() -> None:
    x, y = line_data(100, "float32")
    stats = moments(x, y)
    assert stability_bound(make_spec(Method.bgd, 0.1), stats) == pytest.approx(0.12, abs=5e-4)
    assert stability_bound(make_spec(Method.sgd, 0.1), stats) == pytest.approx(1 / 26, rel=1e-6)
    whole = make_spec(Method.minibatch, 0.1, batch_size=100)
    bgd_like = stability_bound(whole, stats, in_order_batch_lambda(x, y, whole))
    assert bgd_like == pytest.approx(stability_bound(make_spec(Method.bgd, 0.1), stats), rel=1e-9)


@pytest.mark.parametrize(("factor", "grows"), [(0.98, False), (1.02, True)])
def test_bgd_bound_separates_convergence_from_divergence(factor: float, grows: bool) -> None:
    x, y = line_data(100)
    stats = moments(x, y)
    bound = stability_bound(make_spec(Method.bgd, 0.1), stats)
    history = train(x, y, make_spec(Method.bgd, factor * bound, epochs=2000), stats)
    assert bool(history.loss[-1] > history.loss[0]) is grows


@pytest.mark.parametrize("batch_size", [3, 7, 40])
def test_batch_lambda_is_the_largest_batch_hessian_eigenvalue(batch_size: int) -> None:
    x, y = line_data(101, seed=5)
    spec = make_spec(Method.minibatch, 0.1, batch_size=batch_size)
    largest = max(
        np.linalg.eigvalsh(2 * np.array([[np.mean(b * b), b.mean()], [b.mean(), 1.0]])).max()
        for b in (x[lo : lo + batch_size] for lo in range(0, 101, batch_size))
    )
    assert in_order_batch_lambda(x, y, spec) == pytest.approx(largest, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("method", "batch_size", "per_epoch"),
    [(Method.bgd, 23, 1), (Method.sgd, 1, 23), (Method.minibatch, 5, 5)],
)
def test_history_shape_and_update_counts(
    engine: str, method: Method, batch_size: int, per_epoch: int
) -> None:
    x, y = line_data(23)
    spec = make_spec(method, 0.01, epochs=4, batch_size=batch_size, engine=engine)
    history = train(x, y, spec)
    assert np.array_equal(history.epoch, np.arange(5))
    assert history.epoch.dtype == np.int64
    assert history.updates.dtype == np.int64
    assert np.array_equal(history.updates, per_epoch * np.arange(5))
    for column in (history.loss, history.w, history.b):
        assert column.dtype == np.float64
        assert column.shape == (5,)
    assert (history.w[0], history.b[0]) == (-10.0, -20.0)
    assert not history.diverged
    assert history.reason is None


@pytest.mark.parametrize("engine", ENGINES)
def test_partial_last_batch_is_averaged_over_its_own_size(engine: str) -> None:
    x, y = line_data(23)
    w, b, lr = -10.0, -20.0, 0.01
    for lo in range(0, 23, 5):
        xb, yb = x[lo : lo + 5], y[lo : lo + 5]
        error = w * xb + b - yb
        w, b = w - lr * 2 * np.mean(error * xb), b - lr * 2 * np.mean(error)
    history = train(x, y, make_spec(Method.minibatch, lr, epochs=1, batch_size=5, engine=engine))
    assert history.w[1] == pytest.approx(w, rel=1e-12)
    assert history.b[1] == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_compute_dtype_reports_the_arithmetic_used(engine: str) -> None:
    x, y = line_data(10, "float32")
    history = train(x, y, make_spec(Method.sgd, 0.01, dtype="float32", engine=engine))
    assert history.dtype == "float32"
    assert history.compute_dtype == ("float64" if engine == "fast" else "float32")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("method", "lr"), [(Method.sgd, 1e6), (Method.bgd, 1e3)])
def test_overflow_stops_training_without_warnings(engine: str, method: Method, lr: float) -> None:
    x, y = line_data(100, "float32")
    spec = make_spec(method, lr, epochs=300, batch_size=1, dtype="float32", engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = train(x, y, spec)
    assert history.diverged
    bad = ~np.isfinite(history.loss)
    first = int(np.argmax(bad))
    assert bad.any()
    assert bad[first:].all()
    assert np.isnan(history.loss[first + 1 :]).all()
    assert np.isnan(history.w[first + 1 :]).all()
    assert np.isnan(history.b[first + 1 :]).all()
    assert np.isfinite(history.w[:first]).all()
    assert (history.updates[first:] == history.updates[-1]).all()
    assert history.updates[-1] < 300 * (100 if method is Method.sgd else 1)
    assert "overflowed" in history.reason
    assert f"step size {lr:g} is above the stability bound" in history.reason


def per_point_sgd(
    x: np.ndarray, y: np.ndarray, lr: float, orders: list[np.ndarray]
) -> tuple[float, float, int]:
    """Plain per-point SGD from (-10, -20) in x's dtype, stopping as the engines do.

    Returns the final (w, b) and the number of updates made.
    """
    w, b, two_lr, made = x.dtype.type(-10.0), x.dtype.type(-20.0), x.dtype.type(2 * lr), 0
    with np.errstate(all="ignore"):
        for order in orders:
            if not np.isfinite(np.mean((w * x + b - y) ** 2)):
                break
            for i in order:
                error = w * x[i] + b - y[i]
                w, b = w - two_lr * error * x[i], b - two_lr * error
                made += 1
                if not (np.isfinite(w) and np.isfinite(b)):
                    return w, b, made
    return w, b, made


@pytest.mark.parametrize(
    ("engine", "dtype", "lr", "stop"),
    [
        ("fast", "float64", 0.3, "loss at an epoch start"),
        ("fast", "float64", 1e4, "parameters within epoch 0"),
        ("reference", "float32", 0.15, "loss at an epoch start"),
        ("reference", "float32", 1e4, "parameters within epoch 0"),
    ],
)
def test_sgd_stops_counting_where_it_overflows(
    engine: str, dtype: str, lr: float, stop: str
) -> None:
    x, y = line_data(100, dtype)
    history = train(x, y, make_spec(Method.sgd, lr, epochs=20, dtype=dtype, engine=engine))
    *_, made = per_point_sgd(x, y, lr, [np.arange(100)] * 20)
    assert (made % 100 == 0) == stop.startswith("loss")
    assert history.updates[-1] == made


@pytest.mark.parametrize("engine", ENGINES)
def test_shuffled_epochs_visit_points_in_epoch_order(engine: str) -> None:
    x, y = line_data(50)
    spec = make_spec(Method.sgd, 0.01, epochs=2, shuffle=True, shuffle_seed=4, engine=engine)
    history = train(x, y, spec)
    w, b, _ = per_point_sgd(x, y, 0.01, [epoch_order(50, 4, 0), epoch_order(50, 4, 1)])
    assert history.w[2] == pytest.approx(w, rel=1e-12)
    assert history.b[2] == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_tutorial_sgd_divergence_is_flagged_and_explained(engine: str) -> None:
    x, y = line_data(100, "float32")
    history = train(x, y, make_spec(Method.sgd, 0.1, epochs=20, dtype="float32", engine=engine))
    assert history.diverged
    assert np.isfinite(history.loss).all()
    assert history.reason.startswith(f"loss grew from {history.loss[0]:.4g} to ")
    assert "step size 0.1 is above the stability bound 0.0385 = 1/(1 + max x²)" in history.reason
    assert "per-point SGD" in history.reason


def test_divergence_threshold_uses_the_named_factor() -> None:
    spec = make_spec(Method.bgd, 0.1)
    below = np.array([2.0, DIVERGENCE_FACTOR * 2.0 * 0.999, 1.0])
    above = np.array([2.0, DIVERGENCE_FACTOR * 2.0 * 1.001, 1.0])
    assert divergence_reason(below, spec, 0.12) is None
    reason = divergence_reason(above, spec, 0.12)
    assert reason is not None
    assert "not above the stability bound 0.12" in reason


COMPARED = [
    (Method.bgd, 0.1, 1, False),
    (Method.sgd, 0.01, 1, False),
    (Method.sgd, 0.01, 1, True),
    (Method.sgd, 0.1, 1, False),  # diverges: compared while the loss is below 1e6
    (Method.minibatch, 0.02, 10, False),
    (Method.minibatch, 0.02, 7, True),
]


@pytest.mark.parametrize("n", [100, 10_000])
@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-9), ("float32", 1e-5)])
@pytest.mark.parametrize(("method", "lr", "batch_size", "shuffle"), COMPARED)
def test_fast_engine_equals_reference(
    n: int, dtype: str, rtol: float, method: Method, lr: float, batch_size: int, shuffle: bool
) -> None:
    x, y = line_data(n, dtype, seed=n)
    epochs = 2 if n > 1000 and method is Method.sgd else 6
    kw = {"batch_size": batch_size, "shuffle": shuffle, "shuffle_seed": 11, "dtype": dtype}
    fast = train(x, y, make_spec(method, lr, epochs, engine="fast", **kw))
    ref = train(x, y, make_spec(method, lr, epochs, engine="reference", **kw))
    rows = np.isfinite(ref.loss) & (ref.loss < 1e6)
    assert rows[0]
    assert np.array_equal(fast.updates[rows], ref.updates[rows])
    for got, want in [(fast.loss, ref.loss), (fast.w, ref.w), (fast.b, ref.b)]:
        # rtol doubles as an absolute floor: b passes through zero.
        np.testing.assert_allclose(got[rows], want[rows], rtol=rtol, atol=rtol)
    assert fast.diverged == ref.diverged
