"""FP8 decoder: an FP8 code to its exact sign, exponent and significand."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp8_format import FORMAT_INFO, FP8Format, FP8Value


__all__ = ["FP8Code", "FP8Decoder", "decode_fp8"]


class FP8Code(data.Struct):
    """An FP8 code and the format it is in."""
    code: 8
    fp8_format: FP8Format


def decode_fp8(m, code, fmt, name):
    """Combinational logic decoding ``code`` in format ``fmt``; returns an :class:`FP8Value`.

    Shared by the decoder and the multiplier (and later the matmul PEs).
    """
    value = Signal(FP8Value, name=name)
    fields = {}
    for f, info in FORMAT_INFO.items():
        mbits = info.mantissa_bits
        mantissa = code[:mbits]
        exp_field = code[mbits:7]
        top = exp_field == info.max_exponent_field
        if info.has_infinity:
            nan = top & (mantissa != 0)
            inf = top & (mantissa == 0)
        else:
            nan = top & (mantissa == (1 << mbits) - 1)
            inf = 0
        special = nan | inf
        significand = Mux(exp_field == 0, mantissa, mantissa | (1 << mbits))
        exponent = Mux(exp_field == 0, 1, exp_field) - (info.bias + mbits)
        fields[f] = dict(significand=Mux(special, 0, significand),
                         exponent=Mux(special, 0, exponent), nan=nan, inf=inf)
    for field in ("significand", "exponent", "nan", "inf"):
        m.d.comb += getattr(value, field).eq(
            Mux(fmt == FP8Format.E5M2, fields[FP8Format.E5M2][field], fields[FP8Format.E4M3][field]))
    m.d.comb += value.sign.eq(code[7])
    return value


class FP8Decoder(wiring.Component):
    """Decode a stream of FP8 codes (E4M3 or E5M2, chosen per code).

    A finite output is exactly ``(-1)**sign * significand * 2**exponent`` (see
    :class:`~.fp8_format.FP8Value`). Golden model: ``sim/golden/fp8_codec.py``.

    Latency :attr:`latency` (1) cycle; throughput one code per cycle; ``i.ready``
    follows ``o.ready`` when the output register is full.

    Members
    -------
    i : In(stream.Signature(FP8Code))
        Codes to decode.
    o : Out(stream.Signature(FP8Value))
        Decoded values, in order.
    """

    latency = 1

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(FP8Code)),
            "o": Out(stream.Signature(FP8Value)),
        })

    def elaborate(self, platform):
        m = Module()
        decoded = decode_fp8(m, self.i.payload.code, self.i.payload.fp8_format, "decoded")
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(self.i.valid),
                self.o.payload.eq(decoded),
            ]
        return m
