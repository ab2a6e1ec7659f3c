"""Rounding an exact partial sum to an FP32 result (or taking an INT32 one)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..numerics.fp8_format import PRODUCT_MIN_EXPONENT
from amaranth.hdl import signed
from amaranth.lib import data


__all__ = ["FP32_CANONICAL_NAN", "ResultRounder"]


#: The NaN every FP8-mode result that is NaN becomes (positive quiet NaN).
FP32_CANONICAL_NAN = 0x7FC00000


class ResultRounder(wiring.Component):
    """Turn an exact accumulator into a 32-bit result, once, with round to nearest even.

    FP8 modes (``fp8`` high): ``value * 2**-32`` rounded to FP32, ties to even.
    Every nonzero exact sum is at least 2**-32 and, for K <= 65536, below
    2**50, so the result is always a normal FP32 number or zero: no subnormal,
    no overflow. Specials: ``nan`` or both infinities give the canonical NaN
    0x7FC00000; one infinity gives ±Inf; an exact zero is -0 if ``neg_zero``,
    else +0.

    Integer modes: the low 32 bits of ``value`` (the exact INT32 sum). Built with
    ``fp8=False`` (an integer-only engine) it is just that, in two registers.

    Stage 1 finds the magnitude and its leading one, stage 2 normalizes and
    rounds. Latency :attr:`latency` (2); one result per cycle when ``advance``.

    Members
    -------
    sum : In(accumulator layout: value signed(width), nan, pos_inf, neg_inf, neg_zero)
    fp8 : In(1)
    result : Out(32)
    advance : In(1)
    """

    latency = 2

    def __init__(self, width, *, fp8=True):
        self._width = width
        self._fp8 = bool(fp8)
        super().__init__({
            "sum": In(data.StructLayout({"value": signed(width), "nan": 1, "pos_inf": 1,
                                         "neg_inf": 1, "neg_zero": 1})),
            "fp8": In(1),
            "result": Out(32),
            "advance": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        mag_width = self._width - 1
        value = self.sum.value
        if not self._fp8:
            s1_low = Signal(32)
            with m.If(self.advance):
                m.d.sync += [s1_low.eq(value[:32]), self.result.eq(s1_low)]
            return m

        s1_magnitude = Signal(unsigned(mag_width))
        s1_msb = Signal(range(mag_width))
        s1_norm_shift = Signal(range(mag_width))
        s1_sign = Signal()
        s1_nan = Signal()
        s1_inf = Signal()
        s1_neg_zero = Signal()
        s1_fp8 = Signal()
        s1_low = Signal(32)

        magnitude = Signal(unsigned(mag_width))
        m.d.comb += magnitude.eq(Mux(value < 0, -value, value))
        msb = Signal(range(mag_width))
        for i in range(mag_width):  # the last true assignment wins: the leading one
            with m.If(magnitude[i]):
                m.d.comb += msb.eq(i)
        with m.If(self.advance):
            m.d.sync += [
                s1_magnitude.eq(magnitude),
                s1_msb.eq(msb),
                s1_norm_shift.eq(mag_width - 1 - msb),
                s1_sign.eq(value < 0),
                s1_nan.eq(self.sum.nan | (self.sum.pos_inf & self.sum.neg_inf)),
                s1_inf.eq(self.sum.pos_inf | self.sum.neg_inf),
                s1_neg_zero.eq(self.sum.neg_zero),
                s1_fp8.eq(self.fp8),
                s1_low.eq(value[:32]),
                # An infinity's sign is the infinity's, not the finite part's.
            ]
        s1_inf_sign = Signal()
        with m.If(self.advance):
            m.d.sync += s1_inf_sign.eq(self.sum.neg_inf)

        # Stage 2: normalize so the leading one is the top bit, keep 24 bits, round.
        normalized = Signal(unsigned(mag_width))
        m.d.comb += normalized.eq(s1_magnitude << s1_norm_shift)
        kept = normalized[mag_width - 24:]
        round_bit = normalized[mag_width - 25]
        sticky = normalized[:mag_width - 25] != 0
        rounded = Signal(25)
        m.d.comb += rounded.eq(kept + (round_bit & (sticky | kept[0])))
        carry = rounded[24]
        exponent_field = Signal(9)
        m.d.comb += exponent_field.eq(s1_msb + (PRODUCT_MIN_EXPONENT + 127) + carry)
        mantissa = Mux(carry, rounded[1:24], rounded[:23])
        finite = Cat(mantissa, exponent_field[:8], s1_sign)

        fp32 = Signal(32)
        with m.If(s1_nan):
            m.d.comb += fp32.eq(FP32_CANONICAL_NAN)
        with m.Elif(s1_inf):
            m.d.comb += fp32.eq(Cat(Const(0, 23), Const(0xFF, 8), s1_inf_sign))
        with m.Elif(s1_magnitude == 0):
            m.d.comb += fp32.eq(Cat(Const(0, 31), s1_neg_zero))
        with m.Else():
            m.d.comb += fp32.eq(finite)
        with m.If(self.advance):
            m.d.sync += self.result.eq(Mux(s1_fp8, fp32, s1_low))
        return m
