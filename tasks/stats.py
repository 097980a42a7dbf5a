"""Sufficient statistics of a data set: full-data MSE and least squares in O(1) per query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 1 << 22


@dataclass(frozen=True)
class Moments:
    """Count, means and centred second moments (divided by n) of x and y."""

    n: int
    mean_x: float
    mean_y: float
    var_x: float
    cov_xy: float
    var_y: float
    max_x2: float  # largest x², for the per-point stability bound

    def mse(self, w: float | np.ndarray, b: float | np.ndarray) -> float | np.ndarray:
        """Mean squared error of y ≈ w·x + b over the whole data set.

        Written in centred form, so no large sums cancel when the loss is small.
        """
        offset = w * self.mean_x + b - self.mean_y
        return w * w * self.var_x - 2.0 * w * self.cov_xy + self.var_y + offset * offset

    def least_squares(self) -> tuple[float, float]:
        """The (w, b) that minimise the MSE."""
        if self.var_x <= 0.0:
            return 0.0, self.mean_y
        w = self.cov_xy / self.var_x
        return w, self.mean_y - w * self.mean_x

    def hessian_lambda_max(self) -> float:
        """Largest eigenvalue of the MSE Hessian 2·[[E x², E x], [E x, 1]]."""
        exx = self.var_x + self.mean_x**2
        ex = self.mean_x
        trace, det = exx + 1.0, exx - ex * ex
        return float(trace + np.sqrt(max(trace * trace - 4.0 * det, 0.0)))  # 2 · λ of the 2x2


class MomentsAccumulator:
    """Streaming, numerically stable moments: chunk statistics merged by Chan's formula."""

    def __init__(self) -> None:
        self.n = 0
        self.mx = self.my = 0.0
        self.sxx = self.sxy = self.syy = 0.0
        self.max_x2 = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        m = int(x.shape[0])
        if m == 0:
            return
        xc = x.astype(np.float64)
        yc = y.astype(np.float64)
        cmx, cmy = float(xc.mean()), float(yc.mean())
        dx, dy = xc - cmx, yc - cmy
        # einsum, not `@`: BLAS splits a dot product by thread count, so its rounding (and with
        # it every history) would depend on the machine and its load.
        csxx, csxy, csyy = (
            float(np.einsum("i,i->", a, b)) for a, b in ((dx, dx), (dx, dy), (dy, dy))
        )
        self.max_x2 = max(self.max_x2, float(np.max(xc * xc)))
        total = self.n + m
        ddx, ddy = cmx - self.mx, cmy - self.my
        weight = self.n * m / total
        self.sxx += csxx + ddx * ddx * weight
        self.sxy += csxy + ddx * ddy * weight
        self.syy += csyy + ddy * ddy * weight
        self.mx += ddx * m / total
        self.my += ddy * m / total
        self.n = total

    def result(self) -> Moments:
        if self.n == 0:
            raise ValueError("no data: moments of an empty data set")
        n = self.n
        return Moments(n, self.mx, self.my, self.sxx / n, self.sxy / n, self.syy / n, self.max_x2)


def moments(x: np.ndarray, y: np.ndarray) -> Moments:
    """Exact moments in float64, computed chunk by chunk."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("x and y must be of equal length")
    acc = MomentsAccumulator()
    for lo in range(0, int(x.shape[0]), _CHUNK):
        acc.add(x[lo : lo + _CHUNK], y[lo : lo + _CHUNK])
    return acc.result()
