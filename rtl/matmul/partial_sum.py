"""Partial sums of the matmul engine: exact values and the IEEE special-case flags.

Two layouts, both with the same flags:

- a **column sum** (what flows down a column of the systolic array) keeps its
  exact value in two signed parts, ``low`` and ``high``: the value is
  ``high * 2**SPLIT + low``. A product goes into ``low`` if its shift is below
  SPLIT, else into ``high``. Neither part needs more than 64 bits (44 and 39 for
  16 rows), so the adders are short and simulate as native integers, where one
  71-bit sum would not;
- an **accumulator** (one per result, held between passes) has one wide
  ``value``.

Values are integers: in the integer modes the sum itself; in the FP8 modes the
LSB weighs ``2**PRODUCT_MIN_EXPONENT`` (2**-32), the weight of the smallest
product's LSB, so every FP8 product and every sum of them is exact (a
Kulisch-style accumulator).

Flags: ``nan`` (some product was NaN: an operand NaN, or Inf x 0);
``pos_inf``/``neg_inf`` (some product was +Inf/-Inf; both means Inf - Inf, NaN,
decided at the output); ``neg_zero`` (every product so far was -0, so that an
exact zero result is -0 only when IEEE addition would give -0). The empty sum
has ``neg_zero`` set: it is the identity of AND.
"""

from amaranth.hdl import signed
from amaranth.lib import data

from ..numerics.fp8_format import PRODUCT_MAX_EXPONENT, PRODUCT_MIN_EXPONENT
from .mode import MAX_EXACT_K


__all__ = ["SPLIT", "MAX_SHIFT", "column_sum_layout", "accumulator_layout", "empty_sum",
           "merge_flags", "column_to_accumulator"]


#: Products shifted by SPLIT or more go to a column sum's ``high`` part.
SPLIT = 32
#: The largest shift of an FP8 product's significand (to its place in 2**-32 units).
MAX_SHIFT = PRODUCT_MAX_EXPONENT - PRODUCT_MIN_EXPONENT   # 58
_FLAGS = {"nan": 1, "pos_inf": 1, "neg_inf": 1, "neg_zero": 1}
#: Signed width of one integer-mode product (9-bit x 9-bit signed multiplier).
INT_PRODUCT_WIDTH = 18


def _growth(rows):
    return (rows - 1).bit_length()


def column_sum_layout(rows, fp8):
    """Layout of the sum of ``rows`` products; ``high`` only with FP8."""
    if not fp8:
        return data.StructLayout({"low": signed(INT_PRODUCT_WIDTH + _growth(rows)), **_FLAGS})
    low = ((225 << (SPLIT - 1)).bit_length() + 1)                # a term below 2**SPLIT shift
    high = ((225 << (MAX_SHIFT - SPLIT)).bit_length() + 1)       # a term shifted by >= SPLIT
    return data.StructLayout({"low": signed(max(low, INT_PRODUCT_WIDTH) + _growth(rows)),
                              "high": signed(high + _growth(rows)), **_FLAGS})


def accumulator_layout(fp8, max_k=MAX_EXACT_K):
    """Layout holding any sum of ``max_k`` products exactly.

    Integer modes: 32 bits (the result is INT32; with K <= 65536 it never
    overflows). FP8 modes: the sum is below ``max_k * 225 * 2**58``; for
    ``max_k = 65536`` that is below 2**82, so 83 bits.
    """
    if not fp8:
        return data.StructLayout({"value": signed(32), **_FLAGS})
    largest = max_k * (225 << MAX_SHIFT)
    return data.StructLayout({"value": signed(largest.bit_length() + 1), **_FLAGS})


def empty_sum(layout):
    """The empty sum of a layout: every value part 0, no special products, ``neg_zero`` set."""
    return layout.const({name: (1 if name == "neg_zero" else 0) for name, _ in layout})


def merge_flags(x, y):
    """Flag expressions of the sum of two partial sums (views or dicts of fields)."""
    def field(v, name):
        return v[name] if isinstance(v, dict) else getattr(v, name)
    return {
        "nan": field(x, "nan") | field(y, "nan"),
        "pos_inf": field(x, "pos_inf") | field(y, "pos_inf"),
        "neg_inf": field(x, "neg_inf") | field(y, "neg_inf"),
        "neg_zero": field(x, "neg_zero") & field(y, "neg_zero"),
    }


def column_to_accumulator(column):
    """The exact value of a column-sum view, as one expression: ``high * 2**SPLIT + low``."""
    names = {name for name, _ in column.shape()}
    if "high" in names:
        return (column.high << SPLIT) + column.low
    return column.low
