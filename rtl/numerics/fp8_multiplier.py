"""FP8 multiplier: the exact product of two FP8 codes."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp8_decoder import decode_fp8
from .fp8_format import FP8Format, FP8Product, FP8Value


__all__ = ["FP8Operands", "FP8Multiplier", "multiply_fp8"]


class FP8Operands(data.Struct):
    """Two FP8 codes, each with its own format (so E4M3 x E5M2 works too)."""
    a: 8
    b: 8
    a_format: FP8Format
    b_format: FP8Format


def multiply_fp8(m, x, y, name):
    """Combinational exact product of two :class:`FP8Value` views; an :class:`FP8Product`.

    The significand product is at most 15 x 15 = 225 (8 bits); the exponent sum
    lies in [-32, 26]. NaN if an operand is NaN or for Inf x 0, Inf for any other
    product with an infinite operand.
    """
    product = Signal(FP8Product, name=name)
    x_zero = (x.significand == 0) & ~x.nan & ~x.inf
    y_zero = (y.significand == 0) & ~y.nan & ~y.inf
    nan = x.nan | y.nan | (x.inf & y_zero) | (y.inf & x_zero)
    inf = (x.inf | y.inf) & ~nan
    m.d.comb += [
        product.sign.eq(x.sign ^ y.sign),
        product.nan.eq(nan),
        product.inf.eq(inf),
    ]
    with m.If(~nan & ~inf):
        # NaN and Inf operands decode with zero fields, so only the flags differ.
        m.d.comb += [
            product.significand.eq(x.significand * y.significand),
            product.exponent.eq(x.exponent + y.exponent),
        ]
    return product


class FP8Multiplier(wiring.Component):
    """Exact products of pairs of FP8 codes, one pair per cycle.

    Stage 0 decodes both codes (registered), stage 1 multiplies the 4-bit
    significands and adds the exponents (registered into ``o``). The product is
    exact (see :class:`~.fp8_format.FP8Product`); nothing is rounded. Golden
    model: ``sim/golden/fp8_multiplier.py``.

    Latency :attr:`latency` (2) cycles; throughput one product per cycle.

    Members
    -------
    i : In(stream.Signature(FP8Operands))
        Pairs of codes with their formats.
    o : Out(stream.Signature(FP8Product))
        Exact products, in order.
    """

    latency = 2

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(FP8Operands)),
            "o": Out(stream.Signature(FP8Product)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)

        s0_a = decode_fp8(m, self.i.payload.a, self.i.payload.a_format, "s0_a")
        s0_b = decode_fp8(m, self.i.payload.b, self.i.payload.b_format, "s0_b")

        s1_valid = Signal()
        s1_a = Signal(FP8Value)
        s1_b = Signal(FP8Value)
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                s1_a.eq(s0_a),
                s1_b.eq(s0_b),
            ]

        s1_product = multiply_fp8(m, s1_a, s1_b, "s1_product")
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(s1_valid),
                self.o.payload.eq(s1_product),
            ]
        return m
