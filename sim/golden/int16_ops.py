"""Golden models of two 16-bit variants of existing units, which the MiniLM mapping needs
(``docs/minilm.md``: BERT's pre-LayerNorm residual sums have outliers that INT8 cannot
hold, so the LayerNorm input is INT16):

* :func:`requantize_int16` -- the requantizer (``sim/golden/requantizer.py``) with a
  16-bit output: the **same** arithmetic (TFLite single rounding, round half up, one
  rounding), clamped to [-32768, 32767] instead of [-128, 127]. For every input whose
  result lies in [-128, 127] it equals :func:`sim.golden.requantizer.requantize`.
* :func:`requantize_residual_int16` -- the same, with a residual input added to the
  accumulator before the single rounding (``acc + residual * d``, ``d`` a 16-bit integer per
  channel): the residual add of BERT's post-LN blocks, exactly.
* :func:`layernorm_int16` -- the LayerNorm/RMSNorm unit (``sim/golden/layernorm.py``) with
  a 16-bit input: the same integer algorithm and output rounding, with wider statistics
  and a wider rsqrt normalizer. For INT8 inputs it equals
  :func:`sim.golden.layernorm.layernorm` bit for bit.

Widths of the 16-bit LayerNorm for N <= 1024 (n = 11 bits for N)::

    S1 = sum(x)              signed 16 + 10 + 1 = 27 bits
    S2 = sum(x * x)          unsigned 30 + 10 = 40 bits
    D  = N * S2 - S1**2      < N**2 * 2**30 <= 2**50   (LayerNorm: N**2 * variance)
    V  = D * 2**8 + E        < 2**59
    (y, k) = rsqrt(V)        as the INT8 unit: V = m * 4**k, m in [1, 4) truncated to Q22,
                             the same 64-entry table and Newton step; only the leading-one
                             detector and the normalizing shifter are wider (59 bits)
    u  = N * x - S1          signed 28 bits
    z  = (u * y) >> max(k - 4, 0)              |z| <= sqrt(N) * 2**18: same as INT8
    q  = (z * g + (b << (6 + gf)) + 2**(17 + gf)) >> (18 + gf)
    out = clamp(q, -128, 127)

Because ``m`` is a truncation of ``V`` to its 24 leading bits (22 fraction bits) whatever
the width, rsqrt of a wide ``V`` equals :func:`sim.golden.layernorm.rsqrt_fixed` of
``V >> 2c`` with ``k`` increased by ``c`` (any ``c`` that brings ``V`` below 2**44): that is
how this model computes it, so the rsqrt table and Newton step are shared, not copied.
"""

import numpy as np

from rtl.layernorm import BETA_FRAC, EPS_BITS, EPS_FRAC, GAMMA_FRAC_MAX, Y_FRAC
from rtl.numerics.requantizer import SHIFT_MAX, SHIFT_MIN

from .layernorm import rsqrt_fixed


__all__ = ["INT16_MIN", "INT16_MAX", "requantize_int16", "requantize_residual_int16", "layernorm_int16",
           "rsqrt_wide"]


INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1

_RQ_RANGES = {
    "accumulator": (-(1 << 31), (1 << 31) - 1),
    "bias": (-(1 << 31), (1 << 31) - 1),
    "multiplier": (0, (1 << 31) - 1),
    "shift": (-32, 31),
    "zero_point": (INT16_MIN, INT16_MAX),
}


def _as_int_array(name, value, ranges):
    array = np.asarray(value)
    if array.dtype != object and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {array.dtype}")
    low, high = ranges[name]
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"{name} must lie in [{low}, {high}] (its payload field)")
    return array.astype(object)


def requantize_int16(accumulator, bias, multiplier, shift, zero_point=0):
    """INT32 accumulators to INT16: ``clamp(((acc + bias) * M + 2**(t-1)) >> t + zp)``, t = 31 - shift.

    Same fields and rounding as :func:`sim.golden.requantizer.requantize` (round half up,
    once); the zero point is 16-bit and the clamp is [-32768, 32767]. Returns a dict of
    int64 arrays ``value``, ``saturated``, ``error`` (shift outside -31..30).
    """
    args = [_as_int_array(name, value, _RQ_RANGES) for name, value in
            zip(_RQ_RANGES, (accumulator, bias, multiplier, shift, zero_point))]
    shape = np.broadcast_shapes(*(a.shape for a in args))
    acc, bias, multiplier, shift, zero_point = (np.broadcast_to(a, shape).ravel() for a in args)
    error = (shift < SHIFT_MIN) | (shift > SHIFT_MAX)
    t = np.where(error, 1, 31 - shift).astype(object)
    half = np.ones(t.shape, dtype=object) << (t - 1)
    y = ((acc + bias) * multiplier + half) >> t
    z = y + zero_point
    value = np.minimum(np.maximum(z, INT16_MIN), INT16_MAX)
    saturated = (z != value) & ~error
    return {
        "value": np.where(error, 0, value).astype(np.int64).reshape(shape),
        "saturated": saturated.astype(np.int64).reshape(shape),
        "error": error.astype(np.int64).reshape(shape),
    }


def _bit_length(v):
    """bit_length of non-negative int64 values (exact for all of int64, no float rounding)."""
    v = np.asarray(v, dtype=np.int64)
    bits = np.zeros_like(v)
    for k in range(63):
        bits = np.where((v >> k) != 0, k + 1, bits)
    return bits


def rsqrt_wide(v):
    """``(y, k)`` with ``1/sqrt(v) ~= y * 2**-(18 + k)`` for ``v`` in [0, 2**62): the INT8 unit's
    rsqrt (:func:`sim.golden.layernorm.rsqrt_fixed`) with a wider normalizer."""
    v = np.asarray(v, dtype=np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << 62):
        raise ValueError("v must lie in [0, 2**62)")
    c = np.maximum((_bit_length(v) - 44 + 1) // 2, 0)  # V >> 2c < 2**44
    y, k = rsqrt_fixed(v >> (2 * c))
    return y, np.where(v == 0, 0, k + c)


def layernorm_int16(x, gamma_q, beta_q, gamma_frac, eps_q, rms=False):
    """Bit-exact output codes (int64, rows x N, INT8) for INT16 codes ``x`` (rows x N).

    Parameters as :func:`sim.golden.layernorm.layernorm` (from its ``quantize_params`` and
    ``quantize_eps``, with the INT16 input scale); ``gamma_q``/``beta_q`` broadcast against
    ``x`` (N values, or rows x N).
    """
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows x N), not shape {x.shape}")
    n = x.shape[1]
    if n > 1024:
        raise ValueError("N must be at most 1024 (the widths above)")
    if x.size and (x.min() < INT16_MIN or x.max() > INT16_MAX):
        raise ValueError("x must hold INT16 codes")
    if not 0 <= gamma_frac <= GAMMA_FRAC_MAX:
        raise ValueError(f"gamma_frac must lie in [0, {GAMMA_FRAC_MAX}]")
    if not 0 <= eps_q < 1 << EPS_BITS:
        raise ValueError(f"eps_q must lie in [0, 2**{EPS_BITS})")
    g = np.asarray(gamma_q, dtype=np.int64)
    b = np.asarray(beta_q, dtype=np.int64)
    s1 = x.sum(axis=1, keepdims=True)
    s2 = (x * x).sum(axis=1, keepdims=True)
    d = n * s2 if rms else n * s2 - s1 * s1
    y, k = rsqrt_wide((d << EPS_FRAC) + int(eps_q))
    u = n * x if rms else n * x - s1
    z = (u * y) >> np.maximum(k - EPS_FRAC // 2, 0)
    acc = z * g + (b << (Y_FRAC - BETA_FRAC + gamma_frac)) + (1 << (Y_FRAC - 1 + gamma_frac))
    return np.clip(acc >> (Y_FRAC + gamma_frac), -128, 127)


def requantize_residual_int16(accumulator, residual, residual_multiplier, bias, multiplier, shift,
                              zero_point=0):
    """The requantizer with a residual input (new): ``x = acc + residual * d + bias``, then
    exactly :func:`requantize_int16` (one rounding, 16-bit clamp).

    ``residual`` are INT8 codes (per element), ``residual_multiplier`` ``d`` an unsigned
    16-bit integer per output channel. The compiler picks the residual's scale as ``d`` times
    the accumulator's scale, so the residual is added exactly, before the only rounding.
    Numerically this is the same as accumulating extra matmul passes ``residual @ diag(d)``
    into the accumulator (``sim.golden.matmul.matmul`` with ``ceil(d / 127)`` diagonal INT8
    weight passes); a test checks the equivalence.

    Hardware: one 8 x 16-bit multiplier and one adder per lane in front of the requantizer's
    bias adder; ``|residual * d| < 2**23``, so ``acc + residual * d`` must (and in the MiniLM
    program does) stay within INT32, which this model checks.
    """
    residual = np.asarray(residual)
    d = np.asarray(residual_multiplier)
    if residual.size and (residual.min() < -128 or residual.max() > 127):
        raise ValueError("residual must hold INT8 codes")
    if d.size and (d.min() < 0 or d.max() > 0xFFFF):
        raise ValueError("residual_multiplier must lie in [0, 65535]")
    total = np.asarray(accumulator, dtype=np.int64) + residual.astype(np.int64) * d.astype(np.int64)
    if total.size and (total.min() < -(1 << 31) or total.max() >= 1 << 31):
        raise ValueError("accumulator + residual * d leaves INT32")
    return requantize_int16(total, bias, multiplier, shift, zero_point)
