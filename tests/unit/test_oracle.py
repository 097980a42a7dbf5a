"""Both engines against independent oracles: the tutorial's loops run with torch autograd."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from tasks.history import History
from tasks.params import Method
from tasks.training.divergence import DIVERGENCE_FACTOR
from tasks.training.methods import train
from tests.training_helpers import make_spec

ENGINES = ["fast", "reference"]
SEEDS = [0, 1, 7]


def tutorial_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's data set, drawn after torch.manual_seed(seed): shape (100, 1) each."""
    torch.manual_seed(seed)
    X = torch.arange(-5, 5, 0.1).view(-1, 1)
    Y = -5 * X + 0.4 * torch.randn(X.size())
    return X, Y


@dataclass
class Trajectory:
    """Full-data loss, w and b at the start of each epoch and after the last one."""

    loss: list[float]
    w: list[float]
    b: list[float]

    def record(self, w: torch.Tensor, b: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
        with torch.no_grad():
            self.loss.append(torch.mean((w * X + b - Y) ** 2).item())
        self.w.append(w.item())
        self.b.append(b.item())


def autograd_descent(
    X: torch.Tensor, Y: torch.Tensor, lr: float, epochs: int, per_point: bool
) -> Trajectory:
    """Gradient descent from (-10, -20), gradients by autograd, on all points or one at a time."""
    w = torch.tensor(-10.0, requires_grad=True)
    b = torch.tensor(-20.0, requires_grad=True)
    batches = list(zip(X, Y, strict=True)) if per_point else [(X, Y)]
    trajectory = Trajectory([], [], [])
    for _ in range(epochs):
        trajectory.record(w, b, X, Y)
        for xb, yb in batches:
            loss = torch.mean((w * xb + b - yb) ** 2)
            loss.backward()
            w.data = w.data - lr * w.grad.data
            b.data = b.data - lr * b.grad.data
            w.grad.data.zero_()
            b.grad.data.zero_()
    trajectory.record(w, b, X, Y)
    return trajectory


def optim_sgd(X: torch.Tensor, Y: torch.Tensor, lr: float, epochs: int) -> Trajectory:
    """Per-point SGD with nn.Linear(1, 1), MSELoss and torch.optim.SGD, points in stored order."""
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-10.0)
        model.bias.fill_(-20.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = torch.nn.MSELoss()
    trajectory = Trajectory([], [], [])
    for _ in range(epochs):
        trajectory.record(model.weight[0, 0], model.bias[0], X, Y)
        for xi, yi in zip(X, Y, strict=True):
            optimizer.zero_grad()
            criterion(model(xi), yi).backward()
            optimizer.step()
    trajectory.record(model.weight[0, 0], model.bias[0], X, Y)
    return trajectory


def ours(
    X: torch.Tensor, Y: torch.Tensor, method: Method, lr: float, epochs: int, engine: str
) -> History:
    """Our history for the tutorial's start, in float32 like the tutorial's data."""
    spec = make_spec(method, lr, epochs, engine=engine, dtype="float32")
    return train(X.numpy().ravel(), Y.numpy().ravel(), spec)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", SEEDS)
def test_tutorial_preset_follows_the_autograd_oracle(engine: str, seed: int) -> None:
    X, Y = tutorial_data(seed)
    oracle_bgd = autograd_descent(X, Y, 0.1, 20, per_point=False)
    oracle_sgd = autograd_descent(X, Y, 0.1, 20, per_point=True)
    assert oracle_sgd.loss[0] == oracle_bgd.loss[0]

    for method, oracle in [(Method.bgd, oracle_bgd), (Method.sgd, oracle_sgd)]:
        history = ours(X, Y, method, 0.1, 20, engine)
        rows = np.array(oracle.loss) < 1e6
        for got, want in [
            (history.loss, oracle.loss),
            (history.w, oracle.w),
            (history.b, oracle.b),
        ]:
            np.testing.assert_allclose(got[rows], np.array(want)[rows], rtol=1e-5)
        oracle_diverged = max(oracle.loss) > DIVERGENCE_FACTOR * oracle.loss[0]
        assert history.diverged == oracle_diverged == (method is Method.sgd)

    history = ours(X, Y, Method.sgd, 0.1, 20, engine)
    assert min(oracle_sgd.loss[1:]) > 1e9
    assert np.isfinite(history.loss).all()
    assert history.loss[1:].min() > 1e9


@pytest.mark.parametrize(("engine", "tol"), [("fast", 1e-9), ("reference", 1e-5)])
def test_bgd_reaches_the_least_squares_solution(engine: str, tol: float) -> None:
    X, Y = tutorial_data(3)
    x, y = X.numpy().ravel().astype(np.float64), Y.numpy().ravel().astype(np.float64)
    (w, b), *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)
    history = ours(X, Y, Method.bgd, 0.1, 500, engine)
    assert history.w[-1] == pytest.approx(w, rel=tol, abs=tol)
    assert history.b[-1] == pytest.approx(b, rel=tol, abs=tol)


@pytest.mark.parametrize("engine", ENGINES)
def test_stable_sgd_equals_torch_optim_sgd(engine: str) -> None:
    X, Y = tutorial_data(5)
    oracle = optim_sgd(X, Y, 0.01, 10)
    history = ours(X, Y, Method.sgd, 0.01, 10, engine)
    assert not history.diverged
    for got, want in [(history.loss, oracle.loss), (history.w, oracle.w), (history.b, oracle.b)]:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_bgd_lands_in_the_tutorial_table_bands(engine: str, seed: int) -> None:
    X, Y = tutorial_data(seed)
    history = ours(X, Y, Method.bgd, 0.1, 20, engine)
    # The tutorial's row i pairs the loss before update i with (w, b) after it: our row i + 1.
    assert history.loss[0] == pytest.approx(596.72, abs=15)
    assert history.w[1] == pytest.approx(-1.8527, abs=0.10)
    assert history.b[1] == pytest.approx(-16.0621, abs=0.06)
    assert history.loss[19] == pytest.approx(0.22536, abs=0.12)
    assert history.w[20] == pytest.approx(-4.99606, abs=0.06)
    assert history.b[20] == pytest.approx(-0.29068, abs=0.25)
    assert (np.diff(history.loss) < 0).all()
