"""Golden model of the INT8 requantizer (``rtl/numerics/requantizer.py``).

:func:`requantize` is bit-exact with the RTL: TFLite's single-rounding
requantization of ``accumulator + bias`` by ``multiplier * 2**(shift - 31)``,
round half up, plus ``zero_point``, clamped to INT8 (see the RTL module's
docstring for the formula). Intermediates reach 64 bits and the rounding addend
``2**61`` would overflow int64, so the arithmetic is done in Python integers
(NumPy object arrays): exact for every input that fits the payload fields.

:func:`quantize_multiplier` is the host helper that turns a real scale into
``(multiplier, shift)`` exactly as TFLite's ``QuantizeMultiplier`` does with
``TFLITE_SINGLE_ROUNDING``; the compiler uses it, per tensor or per output channel
(:func:`quantize_multipliers`).

:func:`reference_requantize` is the float reference: the exact real scale applied
to ``accumulator + bias`` with one rounding. With ``(multiplier, shift)`` from
:func:`quantize_multiplier` the fixed-point result differs from it by at most 1,
and only where the exact scaled value lies within a relative ``2**-31`` of a tie
(or where the scale is below ``2**-32`` and quantizes to 0).
"""

import math
from fractions import Fraction

import numpy as np

from rtl.numerics.requantizer import SHIFT_MAX, SHIFT_MIN


__all__ = ["requantize", "quantize_multiplier", "quantize_multipliers", "reference_requantize",
           "SHIFT_MIN", "SHIFT_MAX", "INT8_MIN", "INT8_MAX"]


INT8_MIN = -128
INT8_MAX = 127

_RANGES = {
    "accumulator": (-(1 << 31), (1 << 31) - 1),
    "bias": (-(1 << 31), (1 << 31) - 1),
    "multiplier": (0, (1 << 31) - 1),
    "shift": (-32, 31),  # signed(6): -32 and 31 are the error codes
    "zero_point": (INT8_MIN, INT8_MAX),
}


def _as_int_array(name, value):
    array = np.asarray(value)
    if array.dtype == object:
        if not all(isinstance(v, (int, np.integer)) for v in array.flat):
            raise TypeError(f"{name} must hold integers")
    elif not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, not {array.dtype}")
    low, high = _RANGES[name]
    if array.size and (array.min() < low or array.max() > high):
        raise ValueError(f"{name} must lie in [{low}, {high}] (its payload field)")
    return array.astype(object)


def requantize(accumulator, bias, multiplier, shift, zero_point):
    """Requantize INT32 accumulators to INT8, bit-exact with the RTL.

    All arguments are integer arrays (or scalars), broadcast together; each must
    fit its payload field (``ValueError`` otherwise).

    Returns a dict of int64 arrays: ``value`` (INT8 result), ``saturated`` (1 where
    the clamp changed the value) and ``error`` (1 where ``shift`` is -32 or 31,
    outside -31..30; there ``value`` and ``saturated`` are 0).
    """
    args = [_as_int_array(name, value) for name, value in
            zip(_RANGES, (accumulator, bias, multiplier, shift, zero_point))]
    shape = np.broadcast_shapes(*(a.shape for a in args))
    # Work on 1-d object arrays: arithmetic on 0-d object arrays returns bare scalars,
    # which np.where would turn back into (overflowing) int64.
    acc, bias, multiplier, shift, zero_point = (np.broadcast_to(a, shape).ravel() for a in args)
    error = (shift < SHIFT_MIN) | (shift > SHIFT_MAX)
    t = np.where(error, 1, 31 - shift).astype(object)  # 1..62 where valid
    x = acc + bias
    half = np.ones(t.shape, dtype=object) << (t - 1)  # Python ints: exact past 2**63
    y = (x * multiplier + half) >> t  # Python's >> is a floor
    z = y + zero_point
    value = np.minimum(np.maximum(z, INT8_MIN), INT8_MAX)
    saturated = (z != value) & ~error
    return {
        "value": np.where(error, 0, value).astype(np.int64).reshape(shape),
        "saturated": saturated.astype(np.int64).reshape(shape),
        "error": error.astype(np.int64).reshape(shape),
    }


def _round_half_away(value):
    """``std::round`` of a float, exactly."""
    exact = Fraction(value)
    magnitude = math.floor(abs(exact) + Fraction(1, 2))
    return magnitude if exact >= 0 else -magnitude


def quantize_multiplier(real_multiplier):
    """``(multiplier, shift)`` for a real scale, as TFLite's ``QuantizeMultiplier``.

    With ``TFLITE_SINGLE_ROUNDING``: the real scale is approximated by
    ``multiplier * 2**(shift - 31)`` with ``multiplier`` in ``[2**30, 2**31)``
    (rounded to nearest, ties away from zero; relative error at most ``2**-31``)
    and ``shift`` in -31..30. 0 gives ``(0, 0)``; a scale below ``2**-32`` (shift
    below -31) gives ``(0, 0)`` too; a scale of ``2**30`` or more saturates to
    ``(2**31 - 1, 30)``.

    Raises
    ------
    ValueError
        If ``real_multiplier`` is negative, NaN or infinite.
    """
    real = float(real_multiplier)
    if math.isnan(real) or math.isinf(real):
        raise ValueError(f"Real multiplier must be finite, not {real_multiplier!r}")
    if real < 0:
        raise ValueError(f"Real multiplier must not be negative, not {real_multiplier!r}")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)  # real = q * 2**shift, q in [0.5, 1)
    q_fixed = _round_half_away(q * (1 << 31))  # exact: a power-of-two scaling
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < SHIFT_MIN:
        return 0, 0
    if shift > SHIFT_MAX:
        return (1 << 31) - 1, SHIFT_MAX
    return q_fixed, shift


def quantize_multipliers(real_multipliers):
    """Vectorized :func:`quantize_multiplier` (per-channel scales): two int64 arrays."""
    reals = np.asarray(real_multipliers, dtype=np.float64)
    pairs = [quantize_multiplier(r) for r in reals.flat]
    multipliers = np.array([p[0] for p in pairs], dtype=np.int64).reshape(reals.shape)
    shifts = np.array([p[1] for p in pairs], dtype=np.int64).reshape(reals.shape)
    return multipliers, shifts


def reference_requantize(accumulator, bias, real_scale, zero_point):
    """Float reference: ``clamp(round((accumulator + bias) * real_scale) + zero_point)``.

    ``real_scale`` is a float64 array (any finite value >= 0); the product is exact
    (a rational number), rounded once with ties toward +infinity, the RTL's rule,
    so differences from :func:`requantize` come only from quantizing the scale.
    Returns a float64 array of the clamped results.
    """
    acc, bias, scale, zero_point = np.broadcast_arrays(
        np.asarray(accumulator), np.asarray(bias), np.asarray(real_scale, dtype=np.float64),
        np.asarray(zero_point))
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise ValueError("Real scales must be finite and not negative")
    result = []
    for a, b, s, zp in zip(acc.flat, bias.flat, scale.flat, zero_point.flat):
        numerator, denominator = float(s).as_integer_ratio()  # denominator: a power of 2
        x = int(a) + int(b)
        rounded = (2 * x * numerator + denominator) // (2 * denominator)  # floor(v + 1/2)
        result.append(min(max(rounded + int(zp), INT8_MIN), INT8_MAX))
    return np.array(result, dtype=np.float64).reshape(acc.shape)
