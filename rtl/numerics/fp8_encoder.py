"""FP8 encoder: FP32 values to E4M3 or E5M2 codes, round to nearest even."""

from amaranth.hdl import Const, Mux, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp8_format import FORMAT_INFO, FP8Format


__all__ = ["FP8EncoderInput", "FP8Encoder"]


class FP8EncoderInput(data.Struct):
    """An FP32 value (bit pattern), the format to encode it in, and the overflow mode."""
    value: 32
    fp8_format: FP8Format
    saturate: 1


class FP8Encoder(wiring.Component):
    """Encode FP32 values into FP8 codes (E4M3 or E5M2, chosen per value).

    Rounding is to nearest, ties to even, with subnormals. Overflow is decided
    after rounding: with ``saturate`` it gives the largest finite value of the
    sign (±448 or ±57344, the usual choice for inference), without it NaN for
    E4M3 (which has no infinity) or Inf for E5M2, as ml_dtypes does. FP32
    infinities count as overflow. A NaN keeps its sign and becomes ``S.1111.111``
    (E4M3) or ``S.11111.10`` (E5M2). FP32 subnormals are far below half of the
    smallest FP8 subnormal and become signed zeros. Golden model:
    ``sim/golden/fp8_codec.py`` (``encode``), checked against ml_dtypes.

    Stage 0 splits the FP32 fields and works out how many significand bits to
    drop (more for an FP8 subnormal); stage 1 shifts, rounds, packs and checks
    overflow. A rounding carry moves into the exponent field by itself.

    Latency :attr:`latency` (2) cycles; throughput one value per cycle.

    Members
    -------
    i : In(stream.Signature(FP8EncoderInput))
        Values to encode.
    o : Out(stream.Signature(8))
        FP8 codes, in order.
    """

    latency = 2

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(FP8EncoderInput)),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)

        # Stage 0: split fields, compute the drop count and the exponent part.
        value = self.i.payload.value
        s0_exp_field = value[23:31]
        s0_fraction = value[:23]
        s0_unbiased = Signal(signed(10))
        m.d.comb += s0_unbiased.eq(s0_exp_field - 127)

        s1_valid = Signal()
        s1_sign = Signal()
        s1_nan = Signal()
        s1_inf = Signal()
        s1_format = Signal(FP8Format)
        s1_saturate = Signal()
        s1_significand = Signal(24)
        s1_round_position = Signal(range(25))  # bits dropped - 1: where the round bit is
        s1_exp_part = Signal(8)  # max(unbiased - min_unbiased, 0) <= 127 + 14

        drop = {}
        exp_part = {}
        for f, info in FORMAT_INFO.items():
            min_unbiased = 1 - info.bias
            subnormal_shift = Mux(s0_unbiased < min_unbiased, min_unbiased - s0_unbiased, 0)
            total = (23 - info.mantissa_bits) + subnormal_shift
            drop[f] = Mux(total > 25, 25, total)
            exp_part[f] = Mux(s0_unbiased > min_unbiased, s0_unbiased - min_unbiased, 0)
        is_e5m2 = self.i.payload.fp8_format == FP8Format.E5M2

        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                s1_sign.eq(value[31]),
                s1_nan.eq((s0_exp_field == 0xFF) & (s0_fraction != 0)),
                s1_inf.eq((s0_exp_field == 0xFF) & (s0_fraction == 0)),
                s1_format.eq(self.i.payload.fp8_format),
                s1_saturate.eq(self.i.payload.saturate),
                # FP32 zeros and subnormals: a zero significand rounds to zero.
                s1_significand.eq(Mux(s0_exp_field == 0, 0, Const(1 << 23, 24) | s0_fraction)),
                s1_round_position.eq(Mux(is_e5m2, drop[FP8Format.E5M2], drop[FP8Format.E4M3]) - 1),
                s1_exp_part.eq(Mux(is_e5m2, exp_part[FP8Format.E5M2], exp_part[FP8Format.E4M3])),
            ]

        # Stage 1: shift, round to nearest even, pack, handle overflow and NaN.
        s1_shifted = Signal(24)
        s1_kept = Signal(24)
        s1_round_bit = Signal()
        s1_sticky = Signal()
        s1_rounded = Signal(25)
        m.d.comb += [
            s1_shifted.eq(s1_significand >> s1_round_position),
            s1_kept.eq(s1_shifted[1:]),
            s1_round_bit.eq(s1_shifted[0]),
            s1_sticky.eq((s1_significand & ((Const(1, 25) << s1_round_position) - 1)[:24]) != 0),
            s1_rounded.eq(s1_kept + (s1_round_bit & (s1_sticky | s1_kept[0]))),
        ]
        magnitude = {}
        for f, info in FORMAT_INFO.items():
            packed = Signal(unsigned(16), name=f"s1_packed_{f.name.lower()}")
            m.d.comb += packed.eq((s1_exp_part << info.mantissa_bits) + s1_rounded)
            overflow = s1_inf | (packed > info.max_magnitude_code)
            magnitude[f] = Mux(s1_nan, info.nan_magnitude_code,
                           Mux(overflow,
                               Mux(s1_saturate, info.max_magnitude_code, info.overflow_magnitude_code),
                               packed[:7]))
        s1_magnitude = Signal(7)
        m.d.comb += s1_magnitude.eq(Mux(s1_format == FP8Format.E5M2,
                                        magnitude[FP8Format.E5M2], magnitude[FP8Format.E4M3]))
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(s1_valid),
                self.o.payload.eq(Mux(s1_significand == 0, 0, s1_magnitude) | (s1_sign << 7)),
            ]
        return m
