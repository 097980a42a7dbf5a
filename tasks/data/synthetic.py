"""The tutorial's synthetic data, y = slope·x + intercept + noise_std·N(0, 1), drawn with torch.

With the default DataSpec and seed s the data equal, bit for bit, the tutorial's own lines
`torch.manual_seed(s); X = torch.arange(-5, 5, 0.1); Y = -5 * X + 0.4 * torch.randn(X.size())`.
The noise is torch.randn's, drawn chunk by chunk from one seeded generator, so a large data set,
drawn in bounded memory, equals one draw; x is torch.arange's up to ONE_THREAD_ARANGE points.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from tasks.data.dataset import DatasetRef, write_dataset
from tasks.digest import dumps
from tasks.params import DataSpec

# A multiple of 16: torch.randn fills whole blocks of 16 values, so successive draws of this
# size continue one stream exactly as a single draw of the whole data set does.
CHUNK_ROWS = 1 << 20
# torch.arange fills a range of up to 32768 values (ATen's GRAIN_SIZE) on one thread. Longer
# ranges are split across threads, and the values at each split depend on the thread count
# (measured: 100,000 points differ between 2 and 4 threads), so past this x is computed per
# point in float64 instead, which no thread count changes.
ONE_THREAD_ARANGE = 1 << 15


def _x_by_formula(spec: DataSpec, lo: int, hi: int) -> np.ndarray:
    step = (spec.x_stop - spec.x_start) / spec.n_samples
    return (spec.x_start + step * np.arange(lo, hi, dtype=np.float64)).astype(np.float32)


def generate_chunks(
    spec: DataSpec, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the data set as float32 (x, y) chunks of at most `chunk_rows` points, in order."""
    n = spec.n_samples
    tutorial_x = None
    if n <= ONE_THREAD_ARANGE:
        # The tutorial's arange, cut to n points: rounding gives it n + 1 for some n.
        step = (spec.x_stop - spec.x_start) / n
        tutorial_x = torch.arange(spec.x_start, spec.x_stop, step)[:n].numpy()
    generator = torch.Generator().manual_seed(spec.seed)
    slope, intercept, noise_std = np.float32([spec.slope, spec.intercept, spec.noise_std])
    for lo in range(0, n, chunk_rows):
        hi = min(lo + chunk_rows, n)
        x = tutorial_x[lo:hi] if tutorial_x is not None else _x_by_formula(spec, lo, hi)
        noise = torch.randn(hi - lo, generator=generator).numpy()
        # torch's float32 operations, bit for bit, in numpy: each torch operation on a chunk
        # waits for its thread pool (10^8 rows drawn and stored: 15 s instead of 21 s here).
        y = (x * slope + intercept) + noise_std * noise
        yield x, y


def generate(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """The whole data set in memory, as float32 x and y (small sizes, tests)."""
    xs, ys = zip(*generate_chunks(spec), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def write_synthetic(spec: DataSpec, target: Path) -> DatasetRef:
    """Draw the data set of `spec` into `target` chunk by chunk, with bounded memory."""
    versions = {name: version(name) for name in ("torch", "numpy", "pyarrow", "prefect", "gdflow")}
    versions["python"] = platform.python_version()
    metadata = {
        "gdflow.kind": "dataset",
        "gdflow.generator": dumps(spec.model_dump()),
        "gdflow.versions": dumps(versions),
        **{f"gdflow.param.{k}": str(v) for k, v in spec.model_dump().items()},
    }
    described = (  # for the report and the log
        f"synthetic: y = {spec.slope:g}·x + {spec.intercept:g} + {spec.noise_std:g}·N(0,1), "
        f"{spec.n_samples:,} points, x in [{spec.x_start:g}, {spec.x_stop:g}), seed {spec.seed}"
    )
    return write_dataset(target, generate_chunks(spec), spec.n_samples, described, metadata)
