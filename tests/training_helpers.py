"""Pieces the training tests share: tutorial-shaped data, specs, and the CUDA skip reason."""

from __future__ import annotations

import numpy as np

from tasks.params import Method, MethodSpec

NO_CUDA = "needs a CUDA device that torch can see (--device cuda); this machine has none"


def line_data(n: int, dtype: str = "float64", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tutorial-shaped data: n points evenly over [-5, 5), y = -5·x + 0.4·noise."""
    x = np.linspace(-5.0, 5.0, n, endpoint=False)
    y = -5.0 * x + 0.4 * np.random.default_rng(seed).standard_normal(n)
    return x.astype(dtype), y.astype(dtype)


def make_spec(method: Method, lr: float, epochs: int = 3, **kw: object) -> MethodSpec:
    """A spec starting from the tutorial's (w, b) = (-10, -20)."""
    fields: dict[str, object] = {
        "w0": -10.0,
        "b0": -20.0,
        "batch_size": 1,
        "dtype": "float64",
        "shuffle": False,
        "shuffle_seed": 0,
        "engine": "fast",
        "device": "cpu",
        **kw,
    }
    return MethodSpec(method=method, lr=lr, epochs=epochs, **fields)
