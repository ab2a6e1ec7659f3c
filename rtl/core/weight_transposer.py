"""Turns ``lanes`` buffer words into the ``lanes`` rows of their transpose."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["WeightTransposer"]


class WeightTransposer(wiring.Component):
    """Collects ``lanes`` words (word c = row c of a lanes x lanes byte tile), then emits
    the tile's columns as rows: output row r, byte c = input word c, byte r.

    Not pipelined: a tile takes ``2 * lanes`` cycles, which the engine's second weight
    bank hides behind any pass of at least that many A rows.
    """

    def __init__(self, lanes):
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(8, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(8, lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._lanes
        tile = Signal(data.ArrayLayout(data.ArrayLayout(8, n), n))
        count = Signal(range(n + 1))
        emitting = Signal()
        m.d.comb += self.i.ready.eq(~emitting)
        with m.If(self.i.valid & self.i.ready):
            with m.Switch(count):
                for c in range(n):
                    with m.Case(c):
                        m.d.sync += tile[c].eq(self.i.payload)
            with m.If(count == n - 1):
                m.d.sync += [count.eq(0), emitting.eq(1)]
            with m.Else():
                m.d.sync += count.eq(count + 1)
        m.d.comb += self.o.valid.eq(emitting)
        with m.Switch(count):
            for r in range(n):
                with m.Case(r):
                    for c in range(n):
                        m.d.comb += self.o.payload[c].eq(tile[c][r])
        with m.If(self.o.valid & self.o.ready):
            with m.If(count == n - 1):
                m.d.sync += [count.eq(0), emitting.eq(0)]
            with m.Else():
                m.d.sync += count.eq(count + 1)
        return m
