"""The dataset stage: the tutorial's data, bit for bit, stored as Parquet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tasks.dataset import SCHEMA, generate, generate_chunks, write_dataset
from tasks.params import DataSpec
from tasks.stats import moments
from tasks.storage import file_metadata, is_intact, read_manifest, sha256_file


def tutorial_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's two data lines, run after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    x = torch.arange(-5, 5, 0.1).view(-1, 1)
    y = -5 * x + 0.4 * torch.randn(x.size())
    return x.numpy().ravel(), y.numpy().ravel()


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_defaults_reproduce_the_tutorial_bit_for_bit(seed: int) -> None:
    x, y = generate(DataSpec(seed=seed))
    tx, ty = tutorial_data(seed)
    assert x.dtype == np.float32
    assert y.dtype == np.float32
    assert np.array_equal(x.view(np.uint32), tx.view(np.uint32))
    assert np.array_equal(y.view(np.uint32), ty.view(np.uint32))


@pytest.mark.parametrize(("start", "stop", "n"), [(-5, 5, 1000), (0, 1, 10_000), (-3, 7, 500)])
def test_x_matches_torch_arange_for_other_ranges(start: float, stop: float, n: int) -> None:
    x, _ = generate(DataSpec(x_start=start, x_stop=stop, n_samples=n))
    expected = torch.arange(start, stop, (stop - start) / n).numpy()
    assert x.shape == expected.shape
    assert np.array_equal(x, expected)


def test_chunked_generation_equals_one_draw() -> None:
    spec = DataSpec(n_samples=5000, seed=3)
    whole_x, whole_y = generate(spec)
    parts = list(generate_chunks(spec, chunk_rows=1024))
    assert len(parts) == 5
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole_x)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole_y)


def test_parameters_shape_the_data() -> None:
    x, y = generate(DataSpec(n_samples=20_000, slope=2.0, intercept=3.0, noise_std=0.0))
    assert np.allclose(y, 2.0 * x + 3.0, atol=1e-5)
    m = moments(*generate(DataSpec(n_samples=200_000, noise_std=1.5, seed=9)))
    w, b = m.least_squares()
    assert w == pytest.approx(-5.0, abs=0.01)
    assert m.mse(w, b) == pytest.approx(1.5**2, rel=0.02)


def test_parquet_file_columns_metadata_and_manifest(tmp_path) -> None:
    spec = DataSpec(seed=7)
    ref = write_dataset(spec, tmp_path / "d.parquet")
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.schema.remove_metadata() == SCHEMA
    x, y = generate(spec)
    assert np.array_equal(table.column("x").to_numpy(), x)
    assert np.array_equal(table.column("y").to_numpy(), y)
    meta = file_metadata(tmp_path / "d.parquet")
    assert json.loads(meta["gdflow.generator"]) == spec.model_dump()
    for name in spec.model_dump():
        assert f"gdflow.param.{name}" in meta
    versions = json.loads(meta["gdflow.versions"])
    assert {"torch", "numpy", "pyarrow", "prefect", "gdflow", "python"} <= set(versions)
    assert ref.file == read_manifest(tmp_path / "d.parquet")
    assert ref.file.sha256 == sha256_file(tmp_path / "d.parquet")
    assert ref.file.rows == 100
    assert is_intact(tmp_path / "d.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "d.parquet.manifest.json"]


def test_same_parameters_give_a_byte_identical_file(tmp_path) -> None:
    spec = DataSpec(n_samples=3000, seed=5)
    a = write_dataset(spec, tmp_path / "a.parquet")
    b = write_dataset(spec, tmp_path / "b.parquet")
    c = write_dataset(DataSpec(n_samples=3000, seed=6), tmp_path / "c.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert a.file.sha256 == b.file.sha256 != c.file.sha256


def test_moments_and_preview_come_from_the_stream(tmp_path) -> None:
    spec = DataSpec(n_samples=50_000, seed=2)
    ref = write_dataset(spec, tmp_path / "d.parquet")
    x, y = generate(spec)
    direct = moments(x, y)
    for key, value in ref.moments.items():
        assert value == pytest.approx(getattr(direct, key), rel=1e-12, abs=1e-12)
    assert 1000 <= len(ref.preview_x) <= 2000
    assert np.isin(np.asarray(ref.preview_x, dtype=np.float32), x).all()


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    target = tmp_path / "d.parquet"
    write_dataset(DataSpec(), target)
    before = target.read_bytes()

    def exploding(*_args, **_kwargs):
        yield from generate_chunks(DataSpec(n_samples=3000), chunk_rows=1024)
        raise OSError("disk full")

    monkeypatch.setattr("tasks.dataset.generate_chunks", exploding)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(DataSpec(n_samples=3000), target)
    assert target.read_bytes() == before
    assert is_intact(target)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
