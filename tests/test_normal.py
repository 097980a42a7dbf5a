"""tasks.normal: the numpy replica of torch.randn, bit for bit, and when torch is used instead."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import normal
from tasks.dataset import generate_chunks
from tasks.normal import MIN_DRAW, REPLICA_MAX_ROWS, NormalStream, replica_applies
from tasks.params import DataSpec

ROOT = Path(__file__).resolve().parents[1]
needs_replica = pytest.mark.skipif(
    not replica_applies(),
    reason="the replica applies only on x86-64 with AVX2 and FMA, ATEN_CPU_CAPABILITY unset",
)

SEEDS = [0, 1, 42, 123456789, 2**32 + 5]
SIZES = [16, 17, 31, 32, 100, 1000, 4097, 65536 + 7]


def torch_draws(seed: int, sizes: list[int]) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator).numpy() for n in sizes]


def assert_bits_equal(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    differ = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert differ.size == 0, f"{differ.size} values differ, first at {differ[:5]}"


@needs_replica
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sizes", [*([n] for n in SIZES), [1 << 20, 1000], [17, 4096, 33]])
def test_replica_equals_torch_bit_for_bit(seed: int, sizes: list[int]) -> None:
    stream = NormalStream(seed, sizes)
    assert not stream.uses_torch
    for n, expected in zip(sizes, torch_draws(seed, sizes), strict=True):
        assert_bits_equal(stream.draw(n), expected)


@needs_replica
@pytest.mark.parametrize(("seed", "at"), [(34, 298_484), (3, 1_532_311)])
def test_a_zero_radius_gives_plus_zero(seed: int, at: int) -> None:
    """The uniform at `at` is exactly 0 (a first-half lane), so the radius is -0. Its cos and
    sin are positive for seed 34, negative for seed 3; torch returns +0 either way."""
    n = at - at % 16 + 16
    got = NormalStream(seed, [n]).draw(n)
    (expected,) = torch_draws(seed, [n])
    assert_bits_equal(got[n - 16 :], expected[n - 16 :])
    assert got[[at, at + 8]].view(np.uint32).tolist() == [0, 0]


@needs_replica
def test_replica_equals_torch_avx2_kernel(tmp_path: Path) -> None:
    """torch forced to its AVX2 kernel (the default here may be AVX512) draws the same values."""
    sizes = [1 << 16, 1000, 4097]
    code = (
        "import sys, numpy as np, torch; g = torch.Generator().manual_seed(7); "
        "assert torch.backends.cpu.get_cpu_capability() == 'AVX2'; "
        f"np.save(sys.argv[1], np.concatenate([torch.randn(n, generator=g).numpy() "
        f"for n in {sizes}]))"
    )
    target = tmp_path / "avx2.npy"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    subprocess.run([sys.executable, "-c", code, str(target)], env=env, check=True, timeout=120)
    stream = NormalStream(7, sizes)
    assert_bits_equal(np.concatenate([stream.draw(n) for n in sizes]), np.load(target))


@pytest.mark.parametrize("sizes", [[5], [15], [1000, 5], [1, 16, 100]])
def test_draws_under_16_values_use_torch(sizes: list[int]) -> None:
    stream = NormalStream(3, sizes)
    assert stream.uses_torch
    for n, expected in zip(sizes, torch_draws(3, sizes), strict=True):
        assert_bits_equal(stream.draw(n), expected)


@needs_replica
def test_a_replica_stream_refuses_a_draw_under_16_values() -> None:
    stream = NormalStream(0, [32])
    with pytest.raises(ValueError, match="at least 16"):
        stream.draw(MIN_DRAW - 1)


def test_large_totals_and_forced_capabilities_use_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    applies = replica_applies()
    assert normal.uses_torch([REPLICA_MAX_ROWS, 16])
    assert normal.uses_torch([100]) is not applies
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "")
    assert replica_applies() is applies
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not replica_applies()
    assert normal.uses_torch([100])
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setattr(normal, "_cpu_features", lambda: {"AVX2": True})  # no FMA3
    assert not replica_applies()
    monkeypatch.setattr(normal.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(normal, "_cpu_features", lambda: {"AVX2": True, "FMA3": True})
    assert not replica_applies()


def _round_to_float32(q: Fraction) -> np.float32:
    """q rounded to nearest float32, ties to even (q is well inside the normal range)."""
    guess = np.float32(float(q))
    candidates = [
        np.nextafter(guess, np.float32(-np.inf)),
        guess,
        np.nextafter(guess, np.float32(np.inf)),
    ]
    return min(candidates, key=lambda v: (abs(Fraction(float(v)) - q), int(v.view(np.uint32)) & 1))


def _fma_cases() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random operands, and operands whose exact a·b + c sits a hair off a float32 midpoint,
    closer than float64 resolves, so rounding to float64 first lands on the midpoint."""
    rng = np.random.default_rng(1)
    n = 4000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)).astype(np.float32)
    # c with an odd significand, h half its float32 ulp, a·b = ±h·(1 - 2**-30).
    c2 = (rng.integers(2**23, 2**24, n) | 1).astype(np.float64) * 2.0 ** rng.integers(-40, 40, n)
    c2 *= rng.choice([-1.0, 1.0], n)
    half_ulp = np.abs(np.spacing(c2.astype(np.float32)).astype(np.float64)) / 2
    a2 = half_ulp * (1 + 2.0**-15)
    b2 = rng.choice([-1.0, 1.0], n) * (1 - 2.0**-15)
    return (
        np.concatenate([a, a2.astype(np.float32)]),
        np.concatenate([b, b2.astype(np.float32)]),
        np.concatenate([c, c2.astype(np.float32)]),
    )


def test_fma_rounds_once() -> None:
    a, b, c = _fma_cases()
    expected = np.array(
        [
            _round_to_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
            for x, y, z in zip(a, b, c, strict=True)
        ],
        dtype=np.float32,
    )
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert (naive != expected).sum() > 1000  # the cases do trip a double rounding
    got = normal._fma(a.astype(np.float64), b.astype(np.float64), c.astype(np.float64))
    assert_bits_equal(got, expected)


SPECS = [
    DataSpec(),
    DataSpec(seed=2**32 + 5, n_samples=4096 + 17),  # last chunks of 17 and 4113 rows
    DataSpec(n_samples=5000, slope=2.5, intercept=-1.25, noise_std=3.7, seed=9),
    DataSpec(n_samples=3000, x_start=-1e3, x_stop=7.5, slope=0.1, intercept=1e4, seed=11),
    DataSpec(n_samples=500, slope=0.0, intercept=-0.0, noise_std=0.0, seed=1),  # +0 and -0
    DataSpec(n_samples=500, slope=1e39, intercept=3e38, seed=2),  # inf and -inf
    DataSpec(n_samples=500, slope=1e39, intercept=-1e39, seed=2),  # -inf and NaN
]


@needs_replica
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("chunk_rows", [1024, 1 << 20])
def test_generate_chunks_replica_equals_torch_path(
    spec: DataSpec, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = list(generate_chunks(spec, chunk_rows))
    assert not normal.uses_torch([len(x) for x, _ in replica])
    monkeypatch.setattr(normal, "replica_applies", lambda: False)
    with_torch = list(generate_chunks(spec, chunk_rows))
    assert len(replica) == len(with_torch)
    for (x, y), (tx, ty) in zip(replica, with_torch, strict=True):
        assert_bits_equal(x, tx)
        assert_bits_equal(y, ty)


def test_generating_a_small_data_set_does_not_import_torch() -> None:
    if not replica_applies():
        pytest.skip("without the replica, generation imports torch")
    code = (
        "import sys; from tasks.dataset import generate; from tasks.params import DataSpec; "
        "x, y = generate(DataSpec(n_samples=1000, seed=5)); "
        "print(len(y), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000", "False"]
