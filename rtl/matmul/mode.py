"""Operand modes of the matmul engine, chosen per pass at run time.

=============  ==============  ==============  =====================================
mode           activation (A)  weight (W)      result
=============  ==============  ==============  =====================================
INT8           int8            int8            int32 (exact)
UINT8          uint8           int8            int32 (exact); softmax probabilities x V
E4M3           E4M3            E4M3            FP32: exact sum, rounded once (RNE)
E5M2           E5M2            E5M2            FP32: exact sum, rounded once (RNE)
E4M3_E5M2      E4M3            E5M2            FP32: exact sum, rounded once (RNE)
E5M2_E4M3      E5M2            E4M3            FP32: exact sum, rounded once (RNE)
=============  ==============  ==============  =====================================

Codes 6 and 7 are not modes: the engine answers them with an error status.

FP8 sums are exact in a fixed-point accumulator whose LSB weighs
``2**PRODUCT_MIN_EXPONENT`` (2**-32), the smallest possible product LSB; see
``docs/numerics.md`` for widths and the largest K for which the result is exact.
"""

from amaranth.lib import enum

from ..numerics.fp8_format import FP8Format


__all__ = ["MatmulMode", "MAX_EXACT_K"]


#: Largest reduction length (K, summed over all accumulating passes) for which
#: every mode's result is exact: INT32 cannot overflow (65536 * 255 * 128 < 2**31)
#: and the FP8 accumulator (see rtl/matmul/accumulator.py) cannot overflow.
MAX_EXACT_K = 65536


class MatmulMode(enum.Enum, shape=3):
    INT8 = 0
    UINT8 = 1
    E4M3 = 2
    E5M2 = 3
    E4M3_E5M2 = 4
    E5M2_E4M3 = 5

    @property
    def is_fp8(self):
        return self.value >= 2

    @property
    def activation_format(self):
        """The FP8 format of A (None for integer modes)."""
        return {2: FP8Format.E4M3, 3: FP8Format.E5M2,
                4: FP8Format.E4M3, 5: FP8Format.E5M2}.get(self.value)

    @property
    def weight_format(self):
        """The FP8 format of W (None for integer modes)."""
        return {2: FP8Format.E4M3, 3: FP8Format.E5M2,
                4: FP8Format.E5M2, 5: FP8Format.E4M3}.get(self.value)
