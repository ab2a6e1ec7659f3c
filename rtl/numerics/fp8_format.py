"""OCP 8-bit floating-point formats, and the layouts of decoded values and products.

Two formats, from the OCP 8-bit Floating Point Specification (OFP8):

======  ====  ========  ===========  ===========================  ==================
format  bias  mantissa  max finite   infinities                   NaN codes
======  ====  ========  ===========  ===========================  ==================
E4M3    7     3 bits    448          none                         S.1111.111
E5M2    15    2 bits    57344        S.11111.00                   S.11111.{01,10,11}
======  ====  ========  ===========  ===========================  ==================

E4M3 here is ``float8_e4m3fn`` (never ``e4m3fnuz``, which has a different bias and
one NaN).

A decoded finite value is exact and integer-based: ``(-1)**sign * significand *
2**exponent``, where ``significand`` includes the hidden bit (0 to 15 for E4M3,
0 to 7 for E5M2) and ``exponent`` is the weight of its least significant bit. A
product of two decoded values keeps the same form with an 8-bit significand, so
it is exact, and an accumulator can add it by shifting ``significand`` left by
``exponent - min_exponent``.
"""

from dataclasses import dataclass

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum


__all__ = ["FP8Format", "FP8FormatInfo", "FORMAT_INFO", "FP8Value", "FP8Product",
           "PRODUCT_MIN_EXPONENT", "PRODUCT_MAX_EXPONENT"]


class FP8Format(enum.Enum, shape=1):
    """Which 8-bit format a code is in; chosen at run time, per operand."""
    E4M3 = 0
    E5M2 = 1


@dataclass(frozen=True)
class FP8FormatInfo:
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_infinity: bool

    @property
    def max_exponent_field(self):
        return (1 << self.exponent_bits) - 1

    @property
    def min_exponent(self):
        """Exponent of the significand's LSB for subnormals (and the smallest normals)."""
        return 1 - self.bias - self.mantissa_bits

    @property
    def max_exponent(self):
        """Exponent of the significand's LSB for the largest finite values."""
        top = self.max_exponent_field if not self.has_infinity else self.max_exponent_field - 1
        return top - self.bias - self.mantissa_bits

    @property
    def max_magnitude_code(self):
        """The 7-bit magnitude code of the largest finite value."""
        if self.has_infinity:  # E5M2: S.11110.11
            return ((self.max_exponent_field - 1) << self.mantissa_bits) | ((1 << self.mantissa_bits) - 1)
        return (self.max_exponent_field << self.mantissa_bits) | ((1 << self.mantissa_bits) - 2)

    @property
    def overflow_magnitude_code(self):
        """The magnitude code an overflow becomes when not saturating: Inf, else NaN."""
        if self.has_infinity:
            return self.max_exponent_field << self.mantissa_bits
        return 0x7F

    @property
    def nan_magnitude_code(self):
        """The magnitude code this unit writes for NaN (E4M3 has only this one)."""
        return 0x7F if not self.has_infinity else (self.max_exponent_field << self.mantissa_bits) | 0b10


FORMAT_INFO = {
    FP8Format.E4M3: FP8FormatInfo(exponent_bits=4, mantissa_bits=3, bias=7, has_infinity=False),
    FP8Format.E5M2: FP8FormatInfo(exponent_bits=5, mantissa_bits=2, bias=15, has_infinity=True),
}

#: Range of the exponent of an exact product's LSB over every pair of formats.
PRODUCT_MIN_EXPONENT = 2 * min(info.min_exponent for info in FORMAT_INFO.values())
PRODUCT_MAX_EXPONENT = 2 * max(info.max_exponent for info in FORMAT_INFO.values())


class FP8Value(data.Struct):
    """A decoded FP8 code: ``(-1)**sign * significand * 2**exponent`` when finite.

    For NaN and infinity, ``significand`` and ``exponent`` are zero. A zero has
    ``significand == 0`` and keeps its sign.
    """
    significand: unsigned(4)
    exponent: signed(6)
    sign: 1
    nan: 1
    inf: 1


class FP8Product(data.Struct):
    """The exact product of two FP8 values: ``(-1)**sign * significand * 2**exponent``.

    ``nan`` is set if an operand is NaN or for infinity times zero; ``inf`` for any
    other product with an infinite operand. For both, ``significand`` and
    ``exponent`` are zero. ``sign`` is always the XOR of the operand signs.
    """
    significand: unsigned(8)
    exponent: signed(7)
    sign: 1
    nan: 1
    inf: 1
