"""Stability bounds of the three methods, and the judgement whether a run diverged, in words."""

from __future__ import annotations

import numpy as np

from tasks.params import Method, MethodSpec
from tasks.stats import Moments

# A run counts as diverged once its loss exceeds this multiple of its starting loss.
DIVERGENCE_FACTOR = 1e3


def stability_bound(spec: MethodSpec, stats: Moments, batch_lambda: float | None = None) -> float:
    """Largest step size for which the method's error recurrence does not grow.

    Mini-batch descent needs `batch_lambda`, the largest λmax of a batch's MSE Hessian over
    the batches in stored order; for a shuffled run the in-order figure is an approximation.
    """
    if spec.method is Method.bgd:
        return 2.0 / stats.hessian_lambda_max()
    if spec.method is Method.sgd:
        return 1.0 / (1.0 + stats.max_x2)
    if batch_lambda is None:
        raise ValueError("the mini-batch stability bound needs the largest batch λmax")
    return 2.0 / batch_lambda


def method_name(spec: MethodSpec) -> str:
    """The method in words."""
    if spec.method is Method.bgd:
        return "batch gradient descent"
    if spec.method is Method.sgd:
        return "per-point SGD"
    return f"mini-batch descent with batches of {spec.batch_size}"


def bound_formula(spec: MethodSpec) -> str:
    """The stability bound's formula, in words."""
    if spec.method is Method.bgd:
        return "2/λmax(full-data MSE Hessian)"
    if spec.method is Method.sgd:
        return "1/(1 + max x²)"
    if spec.shuffle:
        return (
            "min over the in-order batches of 2/λmax(batch MSE Hessian), approximate when shuffled"
        )
    return "min over batches of 2/λmax(batch MSE Hessian)"


def divergence_reason(loss: np.ndarray, spec: MethodSpec, bound: float) -> str | None:
    """One sentence on why the loss history counts as diverged, or None when it does not."""
    finite = np.isfinite(loss)
    start = loss[0]
    if finite.all() and loss.max() <= DIVERGENCE_FACTOR * max(start, 1e-12):
        return None
    if not finite[0]:
        what = "the loss at the starting point is not finite"
    else:
        peak = loss[finite].max()
        what = f"loss grew from {start:.4g} to {peak:.4g}"
        if peak <= start:
            what = f"loss started at {start:.4g}"
        if not finite.all():
            k = int(np.argmin(finite))
            what += (
                f", then overflowed to {loss[k]} at epoch {k}"
                if np.isinf(loss[k])
                else f", then the parameters overflowed during epoch {k - 1}"
            )
    side = "above" if spec.lr > bound else "not above"
    return (
        f"{what} (step size {spec.lr:g} is {side} the stability bound {bound:.3g}"
        f" = {bound_formula(spec)} for {method_name(spec)})"
    )
