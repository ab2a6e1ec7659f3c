"""Golden model of the FP8 multiplier (``rtl/numerics/fp8_multiplier.py``).

The product of two FP8 codes is exact: ``(-1)**sign * significand * 2**exponent``
with an 8-bit significand. The float reference multiplies the ml_dtypes values in
float64, which is exact for these products.
"""

import numpy as np

from . import fp8_codec


__all__ = ["multiply", "product_to_float", "reference_multiply"]


def multiply(a, b, a_format, b_format):
    """Exact products of FP8 codes ``a`` and ``b`` (arrays, broadcast together).

    Returns a dict of int64 arrays ``significand``, ``exponent``, ``sign``, ``nan``,
    ``inf``. ``nan``: an operand is NaN, or infinity times zero. ``inf``: any other
    product with an infinite operand. Both have significand and exponent 0. For
    finite products ``exponent`` is the sum of the operands' exponents, also when
    the significand is 0. ``sign`` is the XOR of the operand signs in every case.
    """
    x = fp8_codec.decode(a, a_format)
    y = fp8_codec.decode(b, b_format)
    x_zero = (x["significand"] == 0) & (x["nan"] == 0) & (x["inf"] == 0)
    y_zero = (y["significand"] == 0) & (y["nan"] == 0) & (y["inf"] == 0)
    nan = (x["nan"] | y["nan"]) | (x["inf"] & y_zero) | (y["inf"] & x_zero)
    inf = (x["inf"] | y["inf"]) & (1 - nan)
    special = (nan | inf) == 1
    return {
        "significand": np.where(special, 0, x["significand"] * y["significand"]),
        "exponent": np.where(special, 0, x["exponent"] + y["exponent"]),
        "sign": x["sign"] ^ y["sign"],
        "nan": nan.astype(np.int64),
        "inf": inf.astype(np.int64),
    }


def product_to_float(fields):
    """float64 values of product fields (exact)."""
    return fp8_codec.decoded_to_float(fields)


def reference_multiply(a, b, a_format, b_format):
    """float64 products of the ml_dtypes values of ``a`` and ``b`` (exact)."""
    with np.errstate(invalid="ignore"):  # Inf * 0 is NaN, as it should be
        return fp8_codec.reference_decode(a, a_format) * fp8_codec.reference_decode(b, b_format)
