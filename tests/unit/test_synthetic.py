"""The synthetic data: the tutorial's tensors bit for bit, drawn in chunks, stored as Parquet."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.data.dataset import SCHEMA, write_dataset
from tasks.data.synthetic import CHUNK_ROWS, generate, generate_chunks, write_synthetic
from tasks.params import FLOAT32_MAX, NOISE_BOUND
from tasks.stats import moments
from tasks.storage import file_metadata, is_intact, read_manifest, sha256_file
from tests.specs import data_spec


def tutorial_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's two data lines, run after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    x = torch.arange(-5, 5, 0.1).view(-1, 1)
    y = -5 * x + 0.4 * torch.randn(x.size())
    return x.numpy().ravel(), y.numpy().ravel()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_defaults_reproduce_the_tutorial_bit_for_bit(seed: int) -> None:
    x, y = generate(data_spec(seed=seed))
    tx, ty = tutorial_data(seed)
    assert x.dtype == np.float32
    assert y.dtype == np.float32
    assert same_bits(x, tx)
    assert same_bits(y, ty)


@pytest.mark.parametrize(("start", "stop", "n"), [(-5, 5, 1000), (0, 1, 10_000), (-3, 7, 500)])
def test_x_is_torch_arange_for_other_ranges(start: float, stop: float, n: int) -> None:
    x, _ = generate(data_spec(x_start=start, x_stop=stop, n_samples=n))
    expected = torch.arange(start, stop, (stop - start) / n).numpy()
    assert x.shape == expected.shape
    assert np.array_equal(x, expected)


# 7 and 49: torch.arange(0, 1, 1 / n) has n + 1 values. The others cross the size where x
# stops being one torch.arange, and the chunk size.
@pytest.mark.parametrize("n", [2, 7, 49, 100, 32_768, 32_769, 40_000, CHUNK_ROWS + 5])
def test_every_size_gives_exactly_n_increasing_points_in_range(n: int) -> None:
    x, y = generate(data_spec(n_samples=n, x_start=0.0, x_stop=1.0))
    assert len(x) == len(y) == n
    assert x[0] == 0.0
    assert x[-1] < 1.0
    assert (np.diff(x) >= 0).all()
    assert np.allclose(x, np.arange(n) / n, atol=1e-7)


def test_chunked_generation_equals_one_draw() -> None:
    spec = data_spec(n_samples=5000, seed=3)
    whole_x, whole_y = generate(spec)
    parts = list(generate_chunks(spec, chunk_rows=1024))
    assert len(parts) == 5
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole_x)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole_y)


def test_a_large_data_set_is_one_randn_draw_drawn_in_chunks() -> None:
    n = CHUNK_ROWS + 1000
    spec = data_spec(n_samples=n, slope=2.5, intercept=-1.0, noise_std=0.3, seed=11)
    parts = list(generate_chunks(spec))
    assert [len(x) for x, _ in parts] == [CHUNK_ROWS, 1000]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    noise = torch.randn(n, generator=torch.Generator().manual_seed(11))
    expected = (torch.from_numpy(x) * 2.5 - 1.0) + 0.3 * noise
    assert same_bits(y, expected.numpy())
    assert same_bits(x, ((np.arange(n) * (10.0 / n)) - 5.0).astype(np.float32))


@pytest.mark.parametrize("n", [30_000, 100_000])
def test_the_data_do_not_depend_on_torchs_thread_count(n: int) -> None:
    threads = torch.get_num_threads()
    spec = data_spec(n_samples=n, seed=4)
    drawn = []
    try:
        for count in (1, 4):
            torch.set_num_threads(count)
            drawn.append(generate(spec))
    finally:
        torch.set_num_threads(threads)
    (x1, y1), (x4, y4) = drawn
    assert same_bits(x1, x4)
    assert same_bits(y1, y4)


def test_parameters_shape_the_data() -> None:
    x, y = generate(data_spec(n_samples=20_000, slope=2.0, intercept=3.0, noise_std=0.0))
    assert np.allclose(y, 2.0 * x + 3.0, atol=1e-5)
    m = moments(*generate(data_spec(n_samples=200_000, noise_std=1.5, seed=9)))
    w, b = m.least_squares()
    assert w == pytest.approx(-5.0, abs=0.01)
    assert m.mse(w, b) == pytest.approx(1.5**2, rel=0.02)


# Just inside the bound the parameters are accepted, and the data are finite, as torch's are.
@pytest.mark.parametrize(
    "options",
    [
        {"slope": FLOAT32_MAX * (1 - 1e-6) / 5},
        {"intercept": -FLOAT32_MAX * (1 - 1e-6)},
        {"noise_std": FLOAT32_MAX * (1 - 1e-6) / NOISE_BOUND, "slope": 0.0},
        {"x_start": -FLOAT32_MAX * (1 - 1e-6) / 5, "x_stop": 0.0},
    ],
    ids=["slope", "intercept", "noise-std", "x-start"],
)
def test_data_at_float32s_limits_are_finite_and_what_torch_gives(options: dict) -> None:
    spec = data_spec(seed=8, **options)
    with np.errstate(all="raise"):
        x, y = generate(spec)
    noise = torch.randn(100, generator=torch.Generator().manual_seed(8))
    expected = (torch.from_numpy(x) * torch.tensor(spec.slope) + spec.intercept) + (
        spec.noise_std * noise
    )
    assert same_bits(y, expected.numpy())
    assert np.isfinite(x).all()
    assert np.isfinite(y).all()


def test_parquet_file_columns_metadata_and_manifest(tmp_path) -> None:
    spec = data_spec(seed=7)
    ref = write_synthetic(spec, tmp_path / "d.parquet")
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.schema.remove_metadata() == SCHEMA
    x, y = generate(spec)
    assert np.array_equal(table.column("x").to_numpy(), x)
    assert np.array_equal(table.column("y").to_numpy(), y)
    meta = file_metadata(tmp_path / "d.parquet")
    assert meta["gdflow.kind"] == "dataset"
    assert json.loads(meta["gdflow.generator"]) == spec.model_dump()
    for name in spec.model_dump():
        assert f"gdflow.param.{name}" in meta
    versions = json.loads(meta["gdflow.versions"])
    assert {"torch", "numpy", "pyarrow", "prefect", "gdflow", "python"} <= set(versions)
    assert ref.file == read_manifest(tmp_path / "d.parquet")
    assert ref.file.sha256 == sha256_file(tmp_path / "d.parquet")
    assert ref.file.rows == 100
    assert ref.source.startswith("synthetic: y = -5·x + 0 + 0.4·N(0,1), 100 points")
    assert is_intact(tmp_path / "d.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "d.parquet.manifest.json"]


@pytest.mark.parametrize("n", [3000, 50_000])
def test_same_parameters_give_a_byte_identical_file(tmp_path, n: int) -> None:
    a = write_synthetic(data_spec(n_samples=n, seed=5), tmp_path / "a.parquet")
    b = write_synthetic(data_spec(n_samples=n, seed=5), tmp_path / "b.parquet")
    c = write_synthetic(data_spec(n_samples=n, seed=6), tmp_path / "c.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert a.file.sha256 == b.file.sha256 != c.file.sha256


def test_moments_and_preview_come_from_the_stream(tmp_path) -> None:
    spec = data_spec(n_samples=50_000, seed=2)
    ref = write_synthetic(spec, tmp_path / "d.parquet")
    x, y = generate(spec)
    direct = moments(x, y)
    for key, value in ref.moments.items():
        assert value == pytest.approx(getattr(direct, key), rel=1e-12, abs=1e-12)
    assert ref.stats().n == 50_000
    assert 1000 <= len(ref.preview_x) <= 2000
    assert np.isin(np.asarray(ref.preview_x, dtype=np.float32), x).all()
    stride = math.ceil(50_000 / 2000)
    assert np.array_equal(np.asarray(ref.preview_y, dtype=np.float32), y[::stride])


def test_a_preview_spans_chunk_boundaries_at_one_stride(tmp_path) -> None:
    spec = data_spec(n_samples=CHUNK_ROWS + 4321, seed=1)
    chunks = generate_chunks(spec, chunk_rows=77_777)
    ref = write_dataset(tmp_path / "d.parquet", chunks, spec.n_samples, "in chunks", {})
    x, _ = generate(spec)
    stride = math.ceil(spec.n_samples / 2000)
    assert np.array_equal(np.asarray(ref.preview_x, dtype=np.float32), x[::stride])
