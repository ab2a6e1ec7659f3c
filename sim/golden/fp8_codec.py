"""Golden model of the FP8 codec (``rtl/numerics/fp8_decoder.py``, ``fp8_encoder.py``).

Bit-exact with the RTL; checked against ml_dtypes (``float8_e4m3fn``,
``float8_e5m2``), the float reference.

All functions are vectorized over NumPy arrays. Formats are given as
:class:`~rtl.numerics.fp8_format.FP8Format` members or as integer arrays of their
values (0 = E4M3, 1 = E5M2), broadcast against the codes.
"""

import ml_dtypes
import numpy as np

from rtl.numerics.fp8_format import FORMAT_INFO, FP8Format


__all__ = ["decode", "decoded_to_float", "encode", "reference_decode", "reference_encode",
           "ML_DTYPES"]


ML_DTYPES = {
    FP8Format.E4M3: ml_dtypes.float8_e4m3fn,
    FP8Format.E5M2: ml_dtypes.float8_e5m2,
}


def _format_values(fmt):
    if isinstance(fmt, FP8Format):
        return np.int64(fmt.value)
    fmt = np.asarray(fmt, dtype=np.int64)
    if np.any((fmt != 0) & (fmt != 1)):
        raise ValueError("FP8 format values must be 0 (E4M3) or 1 (E5M2)")
    return fmt


def _select(fmt, e4m3, e5m2):
    return np.where(fmt == FP8Format.E5M2.value, e5m2, e4m3)


def _decode_one_format(codes, info):
    man_bits = info.mantissa_bits
    mantissa = codes & ((1 << man_bits) - 1)
    exp_field = (codes >> man_bits) & info.max_exponent_field
    top = exp_field == info.max_exponent_field
    if info.has_infinity:
        nan = top & (mantissa != 0)
        inf = top & (mantissa == 0)
    else:
        nan = top & (mantissa == (1 << man_bits) - 1)
        inf = np.zeros_like(nan)
    special = nan | inf
    significand = np.where(exp_field == 0, mantissa, mantissa | (1 << man_bits))
    exponent = np.maximum(exp_field, 1) - info.bias - man_bits
    return (np.where(special, 0, significand), np.where(special, 0, exponent), nan, inf)


def decode(codes, fmt):
    """Decode FP8 codes into exact fields.

    Returns
    -------
    dict of numpy arrays
        ``significand`` (with the hidden bit), ``exponent`` (weight of the
        significand's LSB), ``sign``, ``nan``, ``inf`` (int64 arrays); a finite
        value is ``(-1)**sign * significand * 2**exponent``. NaN and infinity have
        significand and exponent 0.
    """
    codes = np.asarray(codes)
    if np.any((codes < 0) | (codes > 255)):
        raise ValueError("FP8 codes must be in 0..255")
    codes = codes.astype(np.int64)
    fmt = _format_values(fmt)
    a = _decode_one_format(codes, FORMAT_INFO[FP8Format.E4M3])
    b = _decode_one_format(codes, FORMAT_INFO[FP8Format.E5M2])
    significand, exponent, nan, inf = (_select(fmt, x, y).astype(np.int64) for x, y in zip(a, b))
    return {
        "significand": significand,
        "exponent": exponent,
        "sign": (codes >> 7) & 1,
        "nan": nan,
        "inf": inf,
    }


def decoded_to_float(fields):
    """float64 values of decoded fields (exact: significands have at most 8 bits)."""
    sign = np.where(fields["sign"] == 1, -1.0, 1.0)
    value = sign * np.ldexp(fields["significand"].astype(np.float64),
                            fields["exponent"].astype(np.int64))
    value = np.where(fields["inf"] == 1, sign * np.inf, value)
    return np.where(fields["nan"] == 1, np.nan, value)


def reference_decode(codes, fmt):
    """float64 values of FP8 codes in one format, by ml_dtypes."""
    codes = np.asarray(codes, dtype=np.uint8)
    return codes.view(ML_DTYPES[fmt]).astype(np.float64)


def _encode_one_format(sign, exp_field, fraction, saturate, info):
    """Round normal/zero FP32 fields to one FP8 format (RNE), before NaN/Inf handling."""
    man_bits = info.mantissa_bits
    min_unbiased = 1 - info.bias
    is_zero_or_sub = exp_field == 0  # FP32 subnormals are far below half of FP8's min
    significand = np.where(is_zero_or_sub, 0, fraction | (1 << 23))
    unbiased = exp_field - 127
    # Bits of the 24-bit significand to drop: 23 - man_bits for a normal result,
    # more for a subnormal one; 25 or more always leaves 0 with a 0 round bit.
    drop = 23 - man_bits + np.maximum(min_unbiased - unbiased, 0)
    drop = np.minimum(drop, 25)
    kept = significand >> drop
    round_bit = (significand >> (drop - 1)) & 1
    sticky = (significand & ((1 << (drop - 1)) - 1)) != 0
    kept = kept + (round_bit & (sticky | (kept & 1)))
    # A carry out of the significand moves into the exponent field by itself.
    magnitude = (np.maximum(unbiased - min_unbiased, 0) << man_bits) + kept
    magnitude = np.where(is_zero_or_sub, 0, magnitude)
    overflow = magnitude > info.max_magnitude_code
    magnitude = np.where(overflow,
                         np.where(saturate, info.max_magnitude_code, info.overflow_magnitude_code),
                         magnitude)
    return magnitude


def encode(fp32_bits, fmt, saturate):
    """Encode FP32 values (given as uint32 bit patterns) into FP8 codes.

    Round to nearest, ties to even, with subnormals. Overflow (after rounding)
    gives the largest finite value when ``saturate``, else NaN (E4M3) or Inf
    (E5M2). An FP32 infinity is an overflow too. NaN gives the format's NaN code
    (``S.1111.111`` for E4M3, ``S.11111.10`` for E5M2) keeping the sign. FP32
    subnormals become signed zeros.
    """
    bits = np.asarray(fp32_bits)
    if bits.dtype.kind == "f":
        raise TypeError("encode() takes FP32 bit patterns; use np.float32(x).view(np.uint32)")
    bits = bits.astype(np.int64) & 0xFFFFFFFF
    fmt = _format_values(fmt)
    saturate = np.asarray(saturate, dtype=bool)
    sign = (bits >> 31) & 1
    exp_field = (bits >> 23) & 0xFF
    fraction = bits & 0x7FFFFF
    is_nan = (exp_field == 0xFF) & (fraction != 0)
    is_inf = (exp_field == 0xFF) & (fraction == 0)
    finite_exp = np.where(exp_field == 0xFF, 0xFE, exp_field)  # infinities: force overflow
    magnitudes = []
    for f in (FP8Format.E4M3, FP8Format.E5M2):
        info = FORMAT_INFO[f]
        mag = _encode_one_format(sign, finite_exp, np.where(is_inf, 0, fraction), saturate, info)
        mag = np.where(is_nan, info.nan_magnitude_code, mag)
        magnitudes.append(mag)
    magnitude = _select(fmt, *magnitudes)
    return ((sign << 7) | magnitude).astype(np.uint8)


def reference_encode(values, fmt, saturate):
    """FP8 codes of float32 values in one format, by ml_dtypes.

    ml_dtypes does not saturate; clipping to the largest finite value first gives
    the saturating result (NaN stays NaN, infinities become the largest value).
    """
    values = np.asarray(values, dtype=np.float32)
    dtype = ML_DTYPES[fmt]
    if saturate:
        limit = np.float32(ml_dtypes.finfo(dtype).max)
        values = np.clip(values, -limit, limit)
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype).view(np.uint8)
