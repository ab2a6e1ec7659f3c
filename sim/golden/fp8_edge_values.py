"""FP32 inputs that exercise every rounding decision of the FP8 encoder.

Used by the tests (golden vs ml_dtypes, RTL vs golden) and the bench.
"""

import numpy as np


from .fp8_codec import reference_decode


__all__ = ["encoder_edge_values"]


def _neighbours(values):
    """Each float32 value and the float32 values one ulp below and above it."""
    values = np.asarray(values, dtype=np.float32)
    return np.concatenate([values, np.nextafter(values, np.float32(-np.inf)),
                           np.nextafter(values, np.float32(np.inf))])


def encoder_edge_values(fmt):
    """FP32 bit patterns (uint32) at and around every rounding boundary of ``fmt``.

    Every finite FP8 value, every midpoint between neighbours (the ties), one
    FP32 ulp either side of each, the same below the smallest subnormal and
    above the largest finite value, both signs; zeros, infinities, NaNs, FP32
    subnormals and the extreme FP32 values.
    """
    codes = np.arange(128)  # the positive half
    values = reference_decode(codes, fmt)
    values = np.sort(values[np.isfinite(values)])
    spacing = np.diff(values)
    midpoints = values[:-1] + spacing / 2
    # Beyond the largest finite value: where the next value would be, and its midpoint.
    top, step = values[-1], spacing[-1]
    beyond = np.array([top + step / 2, top + step, top + 2 * step, top * 4])
    # Below the smallest subnormal: half of it (a tie to zero) and a quarter.
    tiny = np.array([values[1] / 2, values[1] / 4, values[1] * 0.75])
    positive = np.concatenate([values, midpoints, beyond, tiny]).astype(np.float32)
    positive = _neighbours(positive)
    specials = np.array([np.inf, np.nan, np.finfo(np.float32).max,
                         np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal,
                         1e-30, 1e30], dtype=np.float32)
    all_values = np.concatenate([positive, specials])
    all_values = np.concatenate([all_values, -all_values])
    bits = np.unique(all_values.view(np.uint32))
    # A NaN with a payload, in both signs.
    return np.concatenate([bits, np.array([0x7FC00001, 0xFF800001, 0x7F800001], dtype=np.uint32)])
