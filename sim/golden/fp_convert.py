"""Golden models of the FP32 -> 8/16-bit converters that follow the matmul engine in FP8
mode (``docs/minilm.md``): the engine's FP32 results go on to the next GEMM as E4M3, or to
the softmax / LayerNorm / activation units as INT8 (INT16 for the LayerNorm input).

Scaling is by a power of two only (an ``exponent_shift`` k, per tensor or per column):
in hardware an adder on the FP32 exponent (E4M3 output) or the shift amount of the
fixed-point aligner (integer output); no multiplier.

:func:`fp32_to_e4m3` -- ``E4M3(x * 2**k)``: the exponent field moves by k, then
:func:`sim.golden.fp8_codec.encode` rounds (to nearest, ties to even, with subnormals) and
saturates to +-448 (the inference convention). Exactly the cast of the real value
``x * 2**k``: a result whose FP32 exponent would underflow is far below half the smallest
E4M3 subnormal (2**-10) and becomes a signed zero; one that would overflow saturates.
NaN stays NaN (E4M3 NaN code, sign kept); +-Inf saturates to +-448.

:func:`fp32_to_int` -- ``clamp(round_half_even(x * 2**k), -2**(b-1), 2**(b-1) - 1)`` for
b = 8 or 16 output bits, computed exactly in integers: the 24-bit significand is shifted
by ``exponent - 150 + k``; a right shift rounds to nearest, ties to even (round bit and
sticky bit, as the FP8 encoder); a left shift that leaves the range saturates. NaN gives 0
with ``nan`` set; +-Inf saturates. FP32 subnormals are handled exactly (they round to 0
for any k below 126).

References: :func:`reference_fp32_to_e4m3` (ml_dtypes on the exact float64 value) and
:func:`reference_fp32_to_int` (``np.rint`` of the exact float64 value, clipped).
"""

import ml_dtypes
import numpy as np

from rtl.numerics.fp8_format import FP8Format

from . import fp8_codec


__all__ = ["SHIFT_LIMIT", "fp32_bits", "fp32_to_e4m3", "fp32_to_int", "fp32_to_int8",
           "fp32_to_int16", "reference_fp32_to_e4m3", "reference_fp32_to_int"]


#: Largest |exponent_shift| (a signed 8-bit field in hardware would do; 64 is plenty).
SHIFT_LIMIT = 64


def fp32_bits(values):
    """uint32 FP32 bit patterns of float values (rounded to float32 first)."""
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def _check(bits, exponent_shift):
    bits = np.asarray(bits)
    if bits.dtype.kind == "f":
        raise TypeError("takes FP32 bit patterns (uint32); use fp32_bits(values)")
    bits = bits.astype(np.int64) & 0xFFFFFFFF
    k = np.asarray(exponent_shift)
    if k.dtype.kind not in "iu":
        raise TypeError("exponent_shift must be an integer (array)")
    k = k.astype(np.int64)
    if k.size and np.abs(k).max() > SHIFT_LIMIT:
        raise ValueError(f"exponent_shift must lie in [-{SHIFT_LIMIT}, {SHIFT_LIMIT}]")
    return bits, k


def fp32_to_e4m3(bits, exponent_shift):
    """E4M3 codes (uint8) of ``x * 2**exponent_shift`` for FP32 bit patterns ``bits``
    (broadcast against ``exponent_shift``), saturating. See the module docstring."""
    bits, k = _check(bits, exponent_shift)
    bits, k = np.broadcast_arrays(bits, k)
    sign = bits & 0x80000000
    exp_field = (bits >> 23) & 0xFF
    fraction = bits & 0x7FFFFF
    special = exp_field == 0xFF                   # NaN / Inf: unchanged
    zero_or_sub = exp_field == 0                  # zero / FP32 subnormal: stays as is (-> +-0)
    new_exp = exp_field + k
    underflow = ~special & ~zero_or_sub & (new_exp <= 0)
    overflow = ~special & ~zero_or_sub & (new_exp >= 0xFF)
    moved = sign | (np.clip(new_exp, 0, 0xFF) << 23) | fraction
    out = np.where(special | zero_or_sub, bits, moved)
    out = np.where(underflow, sign, out)                         # signed zero
    out = np.where(overflow, sign | 0x7F800000, out)             # Inf: saturates in encode
    return fp8_codec.encode(out.astype(np.uint32), FP8Format.E4M3, True)


def fp32_to_int(bits, exponent_shift, out_bits):
    """``clamp(round_half_even(x * 2**k))`` to a signed ``out_bits`` integer (8 or 16).

    Returns a dict of int64 arrays: ``value``, ``saturated`` (the clamp acted, or +-Inf),
    ``nan`` (the input was NaN; value 0).
    """
    if out_bits not in (8, 16):
        raise ValueError("out_bits must be 8 or 16")
    bits, k = _check(bits, exponent_shift)
    bits, k = np.broadcast_arrays(bits, k)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    negative = (bits >> 31) == 1
    exp_field = (bits >> 23) & 0xFF
    fraction = bits & 0x7FFFFF
    nan = (exp_field == 0xFF) & (fraction != 0)
    inf = (exp_field == 0xFF) & (fraction == 0)
    significand = np.where(exp_field == 0, fraction, fraction | (1 << 23))
    e = np.maximum(exp_field, 1) - 150 + k           # value = significand * 2**e
    # Left shifts: anything past 2**(out_bits) saturates; cap the shift to stay in int64.
    left = np.clip(e, 0, out_bits + 1)
    big = (e > out_bits + 1) & (significand != 0)
    # Right shifts: round to nearest, ties to even; 26 or more leaves 0 with round bit 0.
    right = np.clip(-e, 0, 26)
    kept = significand >> right
    round_bit = np.where(right > 0, (significand >> np.maximum(right - 1, 0)) & 1, 0)
    sticky = np.where(right > 1, (significand & ((np.int64(1) << np.maximum(right - 1, 0)) - 1)) != 0,
                      False)
    kept = kept + (round_bit & (sticky | (kept & 1)))
    magnitude = np.where(e >= 0, significand << left, kept)
    magnitude = np.where(big | inf, 1 << out_bits, magnitude)
    value = np.where(negative, -magnitude, magnitude)
    clamped = np.clip(value, lo, hi)
    saturated = (clamped != value) & ~nan
    return {
        "value": np.where(nan, 0, clamped).astype(np.int64),
        "saturated": saturated.astype(np.int64),
        "nan": nan.astype(np.int64),
    }


def fp32_to_int8(bits, exponent_shift):
    """INT8 values (int64 array) of ``round_half_even(x * 2**k)``, saturated; NaN -> 0."""
    return fp32_to_int(bits, exponent_shift, 8)["value"]


def fp32_to_int16(bits, exponent_shift):
    """INT16 values (int64 array) of ``round_half_even(x * 2**k)``, saturated; NaN -> 0."""
    return fp32_to_int(bits, exponent_shift, 16)["value"]


def _exact_values(bits, exponent_shift):
    with np.errstate(invalid="ignore"):  # signalling NaN payloads
        f = np.asarray(bits, dtype=np.uint32).view(np.float32).astype(np.float64)
    return np.ldexp(f, np.asarray(exponent_shift, dtype=np.int64))  # exact (float64 range)


def reference_fp32_to_e4m3(bits, exponent_shift):
    """ml_dtypes' cast of the exact value ``x * 2**k`` (float64), after clipping to +-448."""
    v = _exact_values(bits, exponent_shift)
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.where(np.isnan(v), v, np.clip(v, -448.0, 448.0))
        return v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)


def reference_fp32_to_int(bits, exponent_shift, out_bits):
    """``np.rint`` (half to even) of the exact float64 value, clipped; NaN -> 0."""
    v = _exact_values(bits, exponent_shift)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    with np.errstate(invalid="ignore"):
        r = np.clip(np.rint(v), lo, hi)
    return np.where(np.isnan(r), 0, r).astype(np.int64)
