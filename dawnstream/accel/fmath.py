"""The IR's defined arithmetic: the rules every backend follows, so that maps agree bit for bit.

Rules (the numpy reference, the CPU and the GPU backend all implement exactly these):

1. **Basic float ops** (``+ - * /``, ``sqrt``, ``abs``, ``neg``, ``floor``, ``ceil``, ``round`` =
   round half to even, comparisons) are IEEE 754 binary operations *in the expression's dtype*,
   each rounded to nearest: float32 maps compute in float32, never fused (no FMA contraction: the
   GPU multiplies through ``__fmul_rn``/``__dmul_rn``, which NVVM never fuses; the CPU kernels carry
   no fast-math flags).
2. **exp, log, log10** are not left to each platform's libm (numpy's SIMD float32 ``exp``, glibc and
   CUDA's libdevice differ in the last bit). They are the algorithms below, built from rule-1 float64
   operations, exact power-of-two scaling (``ldexp``/``frexp``) and nothing else, then rounded once
   to the expression's dtype. Accuracy (``tests/unit/test_accel_fmath.py`` measures it against
   numpy): exp and log within 1 ulp of the exact float64 result (faithful, the class of CUDA's own
   exp/log; about 90% of results are the correctly rounded ones), log10 within 2 ulp and exact at
   powers of ten; float32 results were the correctly rounded ones on every value tested.
3. **float → int casts** truncate toward zero; NaN becomes 0; values beyond the target's range
   saturate to its min/max (Java's and Rust's ``as``). C leaves these undefined and x86 returns
   INT_MIN for all of them, which is why numpy's ``astype`` and a GPU disagreed. int → int casts
   wrap (two's complement), float → bool is ``x != 0`` (NaN is true).
4. **max/min** return ``a`` when ``a`` is NaN or ``a > b`` (``a < b``), else ``b``; ``fmax``/``fmin``
   return ``b`` when ``a`` is NaN or ``b > a`` (``b < a``), else ``a``. So ``max(-0.0, 0.0)`` is
   ``0.0`` and ``max(0.0, -0.0)`` is ``-0.0`` on every backend.

"Bit for bit" means: identical bits for every non-NaN result (the sign of zero included), and NaN
exactly where the reference has NaN (NaN payloads are the hardware's).

The functions are written once, over helper names (``_mul``, ``_sel``, ``_rint``, ``_pow2``,
``_frexp``) that each target binds: numpy arrays here (the reference), scalars in the generated
CPU and CUDA modules (:func:`kernel_source` pastes this source into them). exp: Cody & Waite range
reduction x = k·ln2 + r with ln2 split in a high part of 32 significant bits and a low part, then
the degree-13 Taylor polynomial of e^r (|r| ≤ ln2/2, truncation error < 2^-57), scaled by 2^k in two
exact steps. log: x = 2^e·m with m in [√½, √2), f = m - 1 (exact), s = f/(2+f),
log(1+f) = f - (f²/2 - s·(f²/2 + R(s²))) with R the atanh series to s^20 (Muller, "Elementary
Functions", 3rd ed., ch. 11; the evaluation order of fdlibm's e_log.c).

>>> import numpy as np
>>> exp64(np.array([0.0, 0.5, -np.inf, 800.0])).tolist()
[1.0, 1.6487212707001282, 0.0, inf]
>>> cast_array(np.array([np.nan, 1e30, -1e30, -2.7], dtype=np.float32), "int32").tolist()
[0, 2147483647, -2147483648, -2]
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

INF = math.inf
NAN = math.nan
INV_LN2 = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 significant bits: k * LN2_HI is exact for |k| < 2**21
LN2_LO = 1.90821492927058770002e-10  # ln 2 - LN2_HI
EXP_OVER = 709.782712893384  # exp(x) > max float64 above this
EXP_UNDER = -745.1332191019412  # exp(x) < half the smallest subnormal below this
SQRT_HALF = 0.7071067811865476
LOG10_2HI = 3.01029995663611771306e-01  # log10(2) to 40 significant bits: e * LOG10_2HI is exact for |e| < 2**13
LOG10_2LO = 3.69423907715893078616e-13
INV_LN10 = 0.4342944819032518
EXP_TAYLOR = tuple(1.0 / math.factorial(j) for j in range(13, 0, -1))  # 1/13!, ..., 1/1!
LOG_ATANH = tuple(2.0 / (2 * j + 1) for j in range(10, 0, -1))  # 2/21, ..., 2/3

_CONSTANTS = ("INF", "NAN", "INV_LN2", "LN2_HI", "LN2_LO", "EXP_OVER", "EXP_UNDER", "SQRT_HALF", "LOG10_2HI",
              "LOG10_2LO", "INV_LN10", "EXP_TAYLOR", "LOG_ATANH")


# numpy bindings of the helpers (the reference); kernel_source binds scalar ones.
def _mul(a: Any, b: Any) -> Any:
    return np.multiply(a, b)


def _sel(c: Any, a: Any, b: Any) -> Any:
    return np.where(c, a, b)


def _rint(x: Any) -> Any:
    return np.rint(x)


def _pow2(k: Any) -> Any:
    """2**k for whole float64 ``k`` in [-1022, 1023] (exact)."""
    return np.ldexp(1.0, np.asarray(k).astype(np.int32))


def _frexp(x: Any) -> Any:
    m, e = np.frexp(x)
    return m, e.astype(np.float64)


def exp64(x: Any) -> Any:
    """e**x of float64 ``x`` (rule 2): inf above EXP_OVER, 0 below EXP_UNDER, NaN stays NaN."""
    nan = x != x
    over = x > EXP_OVER
    under = x < EXP_UNDER
    xs = _sel(nan | over | under, 0.0, x)
    k = _rint(_mul(xs, INV_LN2))
    r = (xs - _mul(k, LN2_HI)) - _mul(k, LN2_LO)
    p = 0.0 * r
    for c in EXP_TAYLOR:
        p = _mul(p, r) + c
    y = _mul(p, r) + 1.0
    k1 = _rint(_mul(k, 0.5))  # two steps: 2**k alone leaves float64's range for k near -1075 or 1024
    y = _mul(_mul(y, _pow2(k1)), _pow2(k - k1))
    y = _sel(over, INF, y)
    y = _sel(under, 0.0, y)
    return _sel(nan, x, y)


def _log_parts(x: Any) -> Any:
    """(e, f, hfsq, s·(hfsq + R)) with x = 2**e·(1 + f), 1 + f in [sqrt(1/2), sqrt(2)), for finite x > 0
    (others: as for x = 1); log(1 + f) = f - (hfsq - s·(hfsq + R)) (fdlibm's form)."""
    bad = (x != x) | (x <= 0.0) | (x == INF)
    m, e = _frexp(_sel(bad, 1.0, x))
    small = m < SQRT_HALF
    m = _sel(small, m + m, m)
    e = _sel(small, e - 1.0, e)
    f = m - 1.0
    s = f / (2.0 + f)
    z = _mul(s, s)
    r = 0.0 * z
    for c in LOG_ATANH:
        r = _mul(r, z) + c
    r = _mul(r, z)
    hfsq = _mul(_mul(0.5, f), f)
    return e, f, hfsq, _mul(s, hfsq + r)


def _log_specials(x: Any, y: Any) -> Any:
    y = _sel(x == INF, INF, y)
    y = _sel(x == 0.0, -INF, y)
    y = _sel(x < 0.0, NAN, y)
    return _sel(x != x, x, y)


def log64(x: Any) -> Any:
    """Natural log of float64 ``x`` (rule 2): -inf at ±0, NaN below 0, inf at inf."""
    e, f, hfsq, t = _log_parts(x)
    return _log_specials(x, _mul(e, LN2_HI) - ((hfsq - (t + _mul(e, LN2_LO))) - f))


def log10_64(x: Any) -> Any:
    """Base-10 log of float64 ``x`` (rule 2), e·log10(2) + log(m)/ln(10) with log10(2) split in two."""
    e, f, hfsq, t = _log_parts(x)
    return _log_specials(x, _mul(e, LOG10_2HI) + (_mul(f - (hfsq - t), INV_LN10) + _mul(e, LOG10_2LO)))


MATH = {"exp": exp64, "log": log64, "log10": log10_64}
"""The rule-2 functions by IR op name."""


def int_bounds(dtype: str) -> tuple[float, float, int, int]:
    """(lo, hi, min, max) of an integer dtype: a float x saturates to min below lo, to max at hi or
    above; lo and hi are powers of two, exact in float32 and float64."""
    info = np.iinfo(dtype)
    bits = info.bits
    if info.min < 0:
        return -float(2 ** (bits - 1)), float(2 ** (bits - 1)), int(info.min), int(info.max)
    return 0.0, float(2 ** bits), 0, int(info.max)


def cast_array(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a.astype(dtype)`` under rule 3 (float → int saturates, NaN → 0); other casts as numpy's."""
    dt = np.dtype(dtype)
    if a.dtype.kind != "f" or dt.kind not in "iu":
        return a.astype(dt)
    lo, hi, imin, imax = int_bounds(dtype)
    x = a.astype(np.float64)
    low, high = x < lo, x >= hi
    with np.errstate(invalid="ignore"):
        out = np.where(low | high | (x != x), 0.0, x).astype(dt)
    out[low] = imin
    out[high] = imax
    return out


def math_array(fn: str, a: np.ndarray, dtype: str) -> np.ndarray:
    """Rule-2 ``fn`` (exp/log/log10) of ``a``, evaluated in float64 and rounded once to ``dtype``."""
    with np.errstate(all="ignore"):
        return np.asarray(MATH[fn](np.asarray(a, dtype=np.float64))).astype(dtype)


def max_array(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rule 4: ``max``/``min``/``fmax``/``fmin`` elementwise (``a`` and ``b`` of one dtype)."""
    if op == "max":
        return np.where((a != a) | (a > b), a, b)
    if op == "min":
        return np.where((a != a) | (a < b), a, b)
    if op == "fmax":
        return np.where((a != a) | (b > a), b, a)
    return np.where((a != a) | (b < a), b, a)


# Scalar bindings of the helpers, per target. `_rint` on the GPU is the device function of
# cuda_device (NVVM has no rint intrinsic numba lowers); `jit` decorates every function.
_SCALAR_HELPERS = {
    "cpu": '''
@{jit}
def _mul(a, b):
    return a * b


@{jit}
def _rint(x):
    return np.rint(x)
''',
    "cuda": '''
@{jit}
def _mul(a, b):
    return _dmul_rn(a, b)


@{jit}
def _rint(x):
    return _device_rint(x)
''',
}

_COMMON_HELPERS = '''
@{jit}
def _sel(c, a, b):
    return a if c else b


@{jit}
def _pow2(k):
    return math.ldexp(1.0, int(k))


@{jit}
def _frexp(x):
    m, e = math.frexp(x)
    return m, np.float64(e)
'''


def _int_cast_source(dtype: str, jit: str) -> str:
    lo, hi, imin, imax = int_bounds(dtype)
    return (f"@{jit}\ndef _to_{dtype}(x):\n"
            f"    if x != x:\n        return np.{dtype}(0)\n"
            f"    if x >= {hi!r}:\n        return np.{dtype}({imax})\n"
            f"    if x < {lo!r}:\n        return np.{dtype}({imin})\n"
            f"    return np.{dtype}(x)\n")


INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def kernel_source(target: str, jit: str) -> str:
    """Source text of the rule-2 and rule-3 functions for a generated module: ``exp64``, ``log64``,
    ``log10_64`` and ``_to_<int dtype>`` (saturating casts), each decorated ``@<jit>``.

    ``target`` is ``cpu`` or ``cuda``; a ``cuda`` module must import ``_dmul_rn`` (libdevice's
    unfusable multiply, or a plain one under the simulator) and ``_device_rint``. The module needs
    ``math`` and ``np`` imported."""
    parts = [f"{name} = {_constant_source(globals()[name])}" for name in _CONSTANTS]
    parts.append(_SCALAR_HELPERS[target].format(jit=jit))
    parts.append(_COMMON_HELPERS.format(jit=jit))
    for fn in (exp64, _log_parts, _log_specials, log64, log10_64):
        src = inspect.getsource(fn)
        src = src.replace("def ", f"@{jit}\ndef ", 1)
        parts.append(_strip_annotations(src))
    parts += [_int_cast_source(d, jit) for d in INT_DTYPES]
    return "\n\n".join(parts) + "\n"


def _constant_source(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_constant_source(x) for x in v) + ",)"
    return "math.inf" if v == math.inf else "math.nan" if v != v else repr(v)


def _strip_annotations(src: str) -> str:
    # The generated modules import nothing from typing: drop `: Any` and `-> Any`.
    return src.replace(": Any", "").replace(" -> Any", "")
