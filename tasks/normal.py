"""torch.randn's CPU float32 draws, bit for bit, in numpy: small data sets without importing torch.

What is reproduced: successive ``torch.randn(n, generator=g)`` calls, float32 on the CPU, on one
generator seeded with ``g.manual_seed(seed)``, for draws of at least 16 values, where torch runs
its AVX2 kernel (the AVX512 build runs the same one). That kernel

* draws one uniform per value from mt19937 (seeded with the low 32 bits of the seed), keeping
  24 bits of each 32-bit output: u = (r & 0xFFFFFF) / 2**24;
* turns each whole block of 16 uniforms into 16 normals by Box-Muller, 8 lanes at a time:
  radius = sqrt(-2 log(1 - u[0:8])), theta = 2π u[8:16], cos to the first 8, sin to the last 8;
* when n is not a multiple of 16, draws 16 more uniforms and recomputes the last 16 values
  from them as one block.

log and sincos are the kernel's Cephes-style float32 polynomials as the compiler built them,
with fused multiply-adds; they are replayed here in float32 with exactly rounded fused
multiply-adds (float64 sum, error-free TwoSum, round to odd, then one rounding to float32).

torch is used instead where this does not hold or does not pay: not an x86-64 CPU with AVX2 and
FMA, ATEN_CPU_CAPABILITY set (torch may then run another kernel), a draw under 16 values (torch
takes a float64 path there), or more than REPLICA_MAX_ROWS values in all (past that, importing
torch once costs less than the replica's slower arithmetic).
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Iterable
from typing import Any

import numpy as np

MIN_DRAW = 16  # torch's vectorised kernel starts here
# Replica or torch, measured end to end (generate_chunks in a fresh process, 2-core AMD EPYC,
# torch 2.13): the replica draws ~27 M values/s, torch.randn ~290 M/s after a ~1.0-1.3 s import;
# whole data sets break even near 40 M rows. The limit keeps a wide margin below that (faster
# imports, slower numpy), where the replica still saves about a second.
REPLICA_MAX_ROWS = 1 << 24

_F32 = np.float32
_F64 = np.float64
_BLOCK_VALUES = 1 << 15  # values per vectorised pass: the float64 temporaries stay in cache
_LOW28 = (1 << 28) - 1

_TWO_PI = _F32(2 * np.pi)
_SQRTHF = _F32(0.707106781186547524)
_LOG_P = [
    _F32(c)
    for c in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
]
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_FOUR_OVER_PI = _F32(1.27323954473516)
_MINUS_DP = [_F32(-0.78515625), _F32(-2.4187564849853515625e-4), _F32(-3.77489497744594108e-8)]
_COS_P = [_F32(2.443315711809948e-005), _F32(-1.388731625493765e-003), _F32(4.166664568298827e-002)]
_SIN_P = [_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1)]


def _cpu_features() -> dict[str, bool]:
    """numpy's table of the CPU features it detected at import ({} where it has none)."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = getattr(importlib.import_module(name), "__cpu_features__", None)
        except ImportError:
            continue
        if isinstance(features, dict):
            return features
    return {}


def replica_applies() -> bool:
    """Whether torch would run the kernel reproduced here: x86-64, AVX2 and FMA, no override."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    features = _cpu_features()
    if not (features.get("AVX2") and features.get("FMA3")):
        return False
    return not os.environ.get("ATEN_CPU_CAPABILITY")


def _fma(a: Any, b: Any, c: Any) -> np.ndarray:
    """a·b + c rounded once to float32; a, b, c are float64 arrays or scalars of float32 values.

    The product is exact in float64 and the sum is rounded to float64 first. That can only
    change the float32 result when the float64 sum lands on a float32 rounding boundary, and
    every boundary has its low 28 significand bits zero. On those lanes alone, TwoSum gives the
    sum's exact rounding error and round to odd (an inexact sum with an even significand steps
    one ulp toward the exact value) makes the final rounding to float32 the only one.
    """
    p = a * b
    s = p + c
    at_risk = np.bitwise_and(s.view(np.int64), _LOW28) == 0
    if at_risk.any():
        lanes = np.flatnonzero(at_risk)
        flat = s.reshape(-1)
        s_r = flat[lanes]
        p_r = p.reshape(-1)[lanes]
        c_r = c if np.ndim(c) == 0 else np.reshape(c, -1)[lanes]
        c_part = s_r - p_r
        err = (p_r - (s_r - c_part)) + (c_r - c_part)
        odd = (err != 0) & (np.bitwise_and(s_r.view(np.int64), 1) == 0)
        if odd.any():
            flat[lanes[odd]] = np.nextafter(s_r[odd], np.copysign(np.inf, err[odd]))
    return s.astype(_F32)


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(_F64)


def _log(x: np.ndarray) -> np.ndarray:
    """log of float32 values in [2**-24, 1] as torch's AVX2 kernel computes it.

    (Its clamp to the smallest normal number and its NaN for x <= 0 never act on this range.)
    """
    bits = x.view(np.uint32)
    e = ((bits >> 23).astype(np.int32) - 0x7F).astype(_F32) + _F32(1)
    m = ((bits & ~np.uint32(0x7F800000)) | _F32(0.5).view(np.uint32)).view(_F32)
    below = (m < _SQRTHF).astype(_F32)  # the kernel's mask, as 1.0 or 0.0
    m = (m - _F32(1)) + m * below
    e = e - below
    z = m * m
    m64 = _f64(m)
    y = _fma(_LOG_P[0], m64, _LOG_P[1])
    for coef in _LOG_P[2:]:
        y = _fma(_f64(y), m64, coef)
    y = _fma(_f64(y * m), _f64(z), _f64(e * _LOG_Q1))
    # y - z·0.5, a fused multiply-add in the kernel, is exact either way: z·0.5 is exact.
    y = y - z * _F32(0.5)
    return _fma(_f64(e), _LOG_Q2, _f64(m + y))


def _sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of float32 values as torch's AVX2 kernel computes them."""
    x_bits = x.view(np.uint32)
    x = (x_bits & np.uint32(0x7FFFFFFF)).view(_F32)
    j = (x * _FOUR_OVER_PI).astype(np.int32)
    j = (j + 1) & ~1
    y64 = _f64(j.astype(_F32))
    j = j.view(np.uint32)
    sign_sin = (x_bits & np.uint32(0x80000000)) ^ ((j & 4) << 29)
    sign_cos = (~(j - 2) & 4) << 29
    # All ones on the lanes where the sine is the sine polynomial (and the cosine the cosine's).
    sin_poly = ((j & 2) == 0).astype(np.uint32) * np.uint32(0xFFFFFFFF)
    for dp in _MINUS_DP:
        x = _fma(y64, dp, _f64(x))
    x64 = _f64(x)
    z = x * x
    z64 = _f64(z)
    c = _fma(_COS_P[0], z64, _COS_P[1])
    c = _fma(_f64(c), z64, _COS_P[2])
    c = _fma(_f64(c * z), z64, _f64(-(z * _F32(0.5)))) + _F32(1)
    s = _fma(_SIN_P[0], z64, _SIN_P[1])
    s = _fma(_f64(s), z64, _SIN_P[2])
    s = _fma(_f64(s * z), x64, x64)
    # The kernel selects with bit masks (a masked-out lane is +0) and adds the two parts, which
    # also fixes the signs of zeros; this does the same.
    s_part = (s.view(np.uint32) & sin_poly).view(_F32)
    c_part = (c.view(np.uint32) & ~sin_poly).view(_F32)
    sin = c_part + s_part
    cos = (c - c_part) + (s - s_part)
    sin = (sin.view(np.uint32) ^ sign_sin).view(_F32)
    cos = (cos.view(np.uint32) ^ sign_cos).view(_F32)
    return sin, cos


def box_muller(u: np.ndarray) -> np.ndarray:
    """Normals from float32 uniforms, 16 at a time (len(u) a multiple of 16), as torch does."""
    out = np.empty(len(u), dtype=_F32)
    for lo in range(0, len(u), _BLOCK_VALUES):
        block = u[lo : lo + _BLOCK_VALUES].reshape(-1, 16)
        radius = np.sqrt(_F32(-2) * _log(_F32(1) - block[:, :8]))
        sin, cos = _sincos(_TWO_PI * block[:, 8:])
        # torch's last step, fmadd(n, std=1, mean=0), is exact but turns -0 into +0.
        part = out[lo : lo + _BLOCK_VALUES].reshape(-1, 16)
        np.add(radius * cos, _F32(0), out=part[:, :8])
        np.add(radius * sin, _F32(0), out=part[:, 8:])
    return out


class _Replica:
    """mt19937 as torch's CPU generator runs it, and torch's normal kernel on its uniforms."""

    def __init__(self, seed: int) -> None:
        # mt19937's init_genrand, as torch seeds it, set through numpy's public state.
        key = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            prev = key[-1]
            key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
        self._mt = np.random.MT19937(0)
        self._mt.state = {
            "bit_generator": "MT19937",
            "state": {"key": np.array(key, dtype=np.uint32), "pos": 624},
        }

    def _uniforms(self, n: int) -> np.ndarray:
        raw = self._mt.random_raw(n) & 0xFFFFFF
        return raw.astype(_F32) * _F32(2.0**-24)

    def draw(self, n: int) -> np.ndarray:
        if n < MIN_DRAW:
            raise ValueError(f"the replica draws at least {MIN_DRAW} values, not {n}")
        whole = n - n % 16
        out = np.empty(n, dtype=_F32)
        out[:whole] = box_muller(self._uniforms(n)[:whole])
        if whole != n:
            out[n - 16 :] = box_muller(self._uniforms(16))
        return out


class _Torch:
    def __init__(self, seed: int) -> None:
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> np.ndarray:
        import torch

        return torch.randn(n, generator=self.generator).numpy()


def uses_torch(sizes: Iterable[int]) -> bool:
    """Whether draws of these sizes, in this order, are left to torch rather than the replica."""
    sizes = list(sizes)
    return not (
        replica_applies() and all(n >= MIN_DRAW for n in sizes) and sum(sizes) <= REPLICA_MAX_ROWS
    )


class NormalStream:
    """Standard normal float32 draws equal to successive torch.randn(n, generator=g) calls.

    `sizes` are the planned draw sizes: the choice between the numpy replica and torch is made
    once, here, from them (see `uses_torch`). A replica stream refuses a draw under 16 values.
    """

    def __init__(self, seed: int, sizes: Iterable[int]) -> None:
        self.uses_torch = uses_torch(sizes)
        self._source: _Replica | _Torch = _Torch(seed) if self.uses_torch else _Replica(seed)

    @property
    def generator(self) -> Any:
        """The torch.Generator behind a torch stream (None for the replica)."""
        return self._source.generator if isinstance(self._source, _Torch) else None

    def draw(self, n: int) -> np.ndarray:
        """The next n values of the stream, float32."""
        return self._source.draw(n)
