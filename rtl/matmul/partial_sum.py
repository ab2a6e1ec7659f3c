"""Partial sums of the matmul engine: a wide exact value and the IEEE special-case flags.

A partial sum is what flows down a column of the systolic array and what the
accumulator buffer holds between passes:

- ``value``: a two's complement integer. In the integer modes it is the sum
  itself; in the FP8 modes its LSB weighs ``2**PRODUCT_MIN_EXPONENT`` (2**-32), the
  weight of the smallest product's LSB, so every FP8 product and every sum of
  them is an exact integer here (a Kulisch-style accumulator).
- ``nan``: some product was NaN (an operand NaN, or Inf x 0).
- ``pos_inf``, ``neg_inf``: some product was +Inf / -Inf (both means Inf - Inf,
  i.e. NaN, decided at the output).
- ``neg_zero``: every product so far was a negative zero, so that an exact zero
  result is -0 only when IEEE addition would give -0. The empty sum has it set
  (it is the identity of AND); a pass always sums R products, so the output
  never sees an empty sum.
"""

from amaranth.hdl import signed
from amaranth.lib import data

from ..numerics.fp8_format import PRODUCT_MAX_EXPONENT, PRODUCT_MIN_EXPONENT
from .mode import MAX_EXACT_K


__all__ = ["partial_sum_layout", "product_value_width", "column_sum_width",
           "accumulator_width", "identity", "add_partial_sums"]


def product_value_width(fp8):
    """Signed width of one product term: INT8 x INT8 / UINT8 x INT8 fit 17 bits;
    an FP8 product is below 225 * 2**58 < 2**66 in accumulator units."""
    if not fp8:
        return 18
    largest = 225 << (PRODUCT_MAX_EXPONENT - PRODUCT_MIN_EXPONENT)
    return largest.bit_length() + 1


def column_sum_width(rows, fp8):
    """Signed width of the sum of ``rows`` product terms (what flows down a column)."""
    return product_value_width(fp8) + (rows - 1).bit_length()


def accumulator_width(fp8, max_k=MAX_EXACT_K):
    """Signed width that holds any sum of ``max_k`` products exactly.

    Integer modes: 32 bits (the result is INT32; with K <= 65536 it never
    overflows). FP8 modes: the sum is below ``max_k * 225 * 2**58``; for
    ``max_k = 65536`` that is below 2**82, so 83 bits.
    """
    if not fp8:
        return 32
    largest = max_k * (225 << (PRODUCT_MAX_EXPONENT - PRODUCT_MIN_EXPONENT))
    return largest.bit_length() + 1


def partial_sum_layout(width):
    return data.StructLayout({
        "value": signed(width),
        "nan": 1,
        "pos_inf": 1,
        "neg_inf": 1,
        "neg_zero": 1,
    })


def identity(layout):
    """The empty sum: value 0, no special products, ``neg_zero`` set."""
    return layout.const({"value": 0, "nan": 0, "pos_inf": 0, "neg_inf": 0, "neg_zero": 1})


def add_partial_sums(x, y, result_layout):
    """A dict of field expressions for ``x + y`` (two partial-sum views, or a view
    and a dict), to assign to a view of ``result_layout``."""
    def field(v, name):
        return v[name] if isinstance(v, dict) else getattr(v, name)
    return {
        "value": field(x, "value") + field(y, "value"),
        "nan": field(x, "nan") | field(y, "nan"),
        "pos_inf": field(x, "pos_inf") | field(y, "pos_inf"),
        "neg_inf": field(x, "neg_inf") | field(y, "neg_inf"),
        "neg_zero": field(x, "neg_zero") & field(y, "neg_zero"),
    }
