"""The epoch shuffle: a seeded permutation of all rows, uniform, fresh every epoch, and the
same order for both engines."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from tasks.params import Method
from tasks.training.shuffle import RowShuffle, epoch_key, fisher_yates
from tasks.training.visits import array_visits, epoch_order
from tests.training_helpers import line_data, make_spec

N = 100_000
# The rank correlation of two independent random orders of N rows has standard deviation
# 1/sqrt(N - 1) = 0.0032: 0.02 is six of them, and a broken shuffle (the identity, a reversal,
# the same order every epoch, one local to blocks of rows) is far beyond it.
UNCORRELATED = 0.02


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two arrays of distinct integers."""
    return float(np.corrcoef(a.argsort().argsort(), b.argsort().argsort())[0, 1])


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 255, 4097, N + 3])
def test_every_row_is_visited_exactly_once_per_epoch(n: int) -> None:
    for epoch in (0, 1):
        order = epoch_order(n, 5, epoch)
        assert order.dtype == np.int64
        assert np.array_equal(np.sort(order), np.arange(n))


def test_the_same_seed_and_epoch_give_the_same_order() -> None:
    assert np.array_equal(epoch_order(N, 7, 3), epoch_order(N, 7, 3))
    assert np.array_equal(epoch_order(N, 2**70 + 1, 0), epoch_order(N, 2**70 + 1, 0))
    assert epoch_key(7, 3) != epoch_key(3, 7)


def test_orders_are_uncorrelated_with_the_rows_and_with_each_other() -> None:
    first = epoch_order(N, 7, 0)
    others = [epoch_order(N, 7, 1), epoch_order(N, 8, 0), epoch_order(N, 2**40, 0)]
    assert abs(spearman(first, np.arange(N))) < UNCORRELATED
    for other in others:
        assert abs(spearman(first, other)) < UNCORRELATED
    # Each row lands anywhere: a uniform position's mean distance from its row is N/3.
    assert np.mean(np.abs(first - np.arange(N))) / N == pytest.approx(1 / 3, abs=0.01)
    # Neighbours in the order come from anywhere, not from nearby rows.
    assert abs(spearman(first[:-1], first[1:])) < UNCORRELATED


def test_the_correlation_bound_fails_broken_shuffles() -> None:
    rows = np.arange(N)
    local = np.concatenate([np.random.default_rng(0).permutation(b) for b in np.split(rows, 100)])
    assert spearman(rows, rows) > UNCORRELATED  # the identity, or the same order every epoch
    assert spearman(rows[::-1], rows) < -UNCORRELATED
    assert spearman(local, rows) > UNCORRELATED  # shuffled within blocks of 1000 rows only


def chi_square(counts: dict[tuple[int, ...], int], cells: int) -> float:
    """Pearson's statistic of the counts against equally likely cells."""
    observed = np.array(list(counts.values()) + [0] * (cells - len(counts)))
    expected = observed.sum() / cells
    return float(((observed - expected) ** 2).sum() / expected)


# Upper 1e-4 points of the chi-square distribution with 23 and 719 degrees of freedom.
CHI2_23, CHI2_719 = 57.07, 868.65


def test_every_order_of_four_rows_is_equally_likely() -> None:
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(12_000):
        order = tuple(epoch_order(4, seed, 0))
        counts[order] = counts.get(order, 0) + 1
    assert set(counts) == set(permutations(range(4)))
    assert chi_square(counts, 24) < CHI2_23


def test_fisher_yates_permutes_each_bucket_uniformly() -> None:
    rows = np.arange(8, dtype=np.complex64)
    starts = np.array([0, 5] + [8] * 15)  # buckets [0, 5) and [5, 8), then empty ones
    counts: dict[tuple[int, ...], int] = {}
    for stream in range(24_000):
        shuffled = rows.copy()
        fisher_yates(shuffled, starts, epoch_key(1, 2), stream)
        order = tuple(int(v) for v in shuffled.real)
        assert sorted(order[:5]) == [0, 1, 2, 3, 4]
        counts[order] = counts.get(order, 0) + 1
    assert chi_square(counts, math.factorial(5) * math.factorial(3)) < CHI2_719


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shuffled_rows_are_the_columns_in_epoch_order_exactly(dtype: str) -> None:
    x, y = line_data(N + 3, dtype, seed=4)
    x.flags.writeable = y.flags.writeable = False  # as read from a file
    shuffle = RowShuffle(x, y)
    for epoch in (0, 1):
        order = epoch_order(N + 3, 9, epoch)
        pieces = [
            (px.copy(), py.copy()) for px, py in shuffle.columns(9, epoch)
        ]  # views of a buffer
        assert len(pieces) > 1
        assert np.array_equal(np.concatenate([px for px, _ in pieces]), x[order])
        assert np.array_equal(np.concatenate([py for _, py in pieces]), y[order])


@pytest.mark.parametrize("multiple", [1024, 7])
def test_shuffled_visits_serve_the_points_in_epoch_order(multiple: int) -> None:
    x, y = line_data(50_001, "float32", seed=3)
    visits = array_visits(x, y, make_spec(Method.sgd, 0.01, shuffle=True, shuffle_seed=3))
    assert not visits.fixed
    # taken one after the other, as training does: a chunk may be a view of a reused buffer
    chunks = [(cx.copy(), cy.copy()) for cx, cy in visits.chunks(1, multiple)]
    assert all(cx.shape[0] % multiple == 0 for cx, _ in chunks[:-1])
    order = epoch_order(50_001, 3, 1)
    assert np.array_equal(np.concatenate([cx for cx, _ in chunks]), x[order])
    assert np.array_equal(np.concatenate([cy for _, cy in chunks]), y[order])
