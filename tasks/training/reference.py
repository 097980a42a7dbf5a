"""Reference engine: the tutorial's gradient descent in plain PyTorch, the oracle of the fast path.

Model y ≈ w·x + b, loss = mean((w·x + b − y)²). On a batch of points (x_i, y_i):

    error_i = w·x_i + b − y_i
    grad_w  = 2·mean(error_i·x_i),   grad_b = 2·mean(error_i)
    w, b    = w − lr·grad_w,  b − lr·grad_b     (both from the gradient at the old w, b)

BGD takes the whole data as one batch, SGD each point in turn, mini-batch descent consecutive
batches of B points (the last holds the n mod B left over). Each epoch first records the
full-data loss at the current (w, b); the last row holds the state after training.
It runs on the CPU, or on a GPU torch sees (`--device cuda`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from tasks.errors import InputError
from tasks.params import Method, MethodSpec
from tasks.training.visits import epoch_order, shuffled


def check_device(device: str) -> None:
    """Refuse a CUDA device that torch cannot see, before any work is done for it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("torch sees no CUDA device on this machine; use --device cpu")


def full_loss(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error over the whole data set."""
    return torch.mean((w * x + b - y) ** 2).item()


def gradient_step(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One simultaneous update of (w, b) with the analytic MSE gradient on one batch."""
    error = w * x + b - y
    grad_w = 2 * torch.mean(error * x)
    grad_b = 2 * torch.mean(error)
    return w - lr * grad_w, b - lr * grad_b


def point_step(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """gradient_step on a single point, where the means are the values themselves."""
    error = w * x + b - y
    return w - lr * (2 * error * x), b - lr * (2 * error)


def train_reference(
    x: np.ndarray, y: np.ndarray, spec: MethodSpec, tick: Callable[[int, float], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train in spec.dtype arithmetic on spec.device: (loss, w, b, updates), each epochs + 1 long.

    A shuffled epoch visits the points in epoch_order; `tick(e, loss)` hears the loss after
    each epoch e. Training stops once the loss or a parameter is not finite: later rows are
    NaN and the update count stays where it stopped.
    """
    device = spec.device
    dtype = getattr(torch, spec.dtype)
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    yt = torch.as_tensor(y, dtype=dtype, device=device)
    w = torch.tensor(spec.w0, dtype=dtype, device=device)
    b = torch.tensor(spec.b0, dtype=dtype, device=device)
    size = {Method.bgd: xt.shape[0], Method.sgd: 1, Method.minibatch: spec.batch_size}[spec.method]
    step = point_step if spec.method is Method.sgd else gradient_step

    epochs = spec.epochs
    loss, ws, bs = np.full((3, epochs + 1), np.nan)
    updates = np.zeros(epochs + 1, dtype=np.int64)
    ws[0], bs[0] = w.item(), b.item()
    count = 0
    with torch.inference_mode():
        for e in range(epochs):
            loss[e] = full_loss(w, b, xt, yt)
            if tick is not None and e > 0:
                tick(e, loss[e])
            if not math.isfinite(loss[e]):
                break
            if shuffled(spec):
                perm = torch.as_tensor(epoch_order(len(x), spec.shuffle_seed, e), device=device)
                xe, ye = xt[perm], yt[perm]
            else:
                xe, ye = xt, yt
            # consecutive batches; single points as 0-d tensors, for point_step
            pieces = (xe, ye) if size == 1 else (xe.split(size), ye.split(size))
            for xb, yb in zip(*pieces, strict=True):
                w, b = step(w, b, xb, yb, spec.lr)
                count += 1
                finite = math.isfinite(w.item()) and math.isfinite(b.item())
                if not finite:
                    break
            updates[e + 1 :] = count
            if not finite:
                break
            ws[e + 1], bs[e + 1] = w.item(), b.item()
        else:
            loss[epochs] = full_loss(w, b, xt, yt)
    if tick is not None:
        tick(epochs, loss[epochs])
    return loss, ws, bs, updates
