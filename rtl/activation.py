"""Elementwise activation of INT8 codes by a reloadable 256-entry table.

For an INT8 input every elementwise function (GELU, tanh-GELU, SiLU, ReLU, ...) has
only 256 possible inputs, so the unit is a lookup table that the host fills from the
golden model (:func:`sim.golden.activation.build_table`) for the layer's input and
output scales: exact with respect to the golden model by construction. The table is
reloaded between layers through the ``table`` stream without rebuilding hardware.

INT32 inputs (matmul accumulators) go through the requantizer
(``rtl/numerics/requantizer.py``) to INT8 first; the engine chains the two units.

Golden model: ``sim/golden/activation.py``.
"""

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


__all__ = ["ActivationTableWrite", "Activation"]


class ActivationTableWrite(data.Struct):
    """One table entry written by the host.

    Members
    -------
    index : unsigned(8)
        The input code's bit pattern (``code & 0xFF``).
    value : signed(8)
        The output code for that input.
    """
    index: unsigned(8)
    value: signed(8)


class Activation(wiring.Component):
    """``o[k] = table[i[k] & 0xFF]`` for ``lanes`` INT8 codes per transfer.

    The table is one 256 x 8-bit memory with a read port per lane (a lane's port is
    a copy of the block RAM in synthesis). ``table`` is always ready; a write takes
    effect for codes accepted from the next cycle on. Reload it between layers, when
    no codes are in flight (codes in flight during a write may see either value).

    Latency :attr:`latency` (1, the memory read) from an input transfer to
    ``o.valid``; throughput one transfer (``lanes`` codes) per cycle. Backpressure
    stalls the unit (``i.ready = ~o.valid | o.ready``); the read ports are enabled
    only when the pipeline advances, so a stalled output holds its payload.

    Parameters
    ----------
    lanes : int
        Codes per transfer.

    Members
    -------
    i : In(stream.Signature(ArrayLayout(signed(8), lanes)))
        Input codes.
    o : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        Output codes, in order.
    table : In(stream.Signature(ActivationTableWrite))
        Table writes from the host.
    """

    latency = 1

    def __init__(self, lanes=1):
        if not isinstance(lanes, int) or lanes < 1:
            raise TypeError(f"Lane count must be a positive integer, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "table": In(stream.Signature(ActivationTableWrite)),
        })

    lanes = property(lambda self: self._lanes)

    def elaborate(self, platform):
        m = Module()
        # One copy of the table per lane, all written together: a memory with one read
        # port maps onto one block RAM (Yosys' ECP5 memory mapper gives up on 16 read
        # ports of one memory).
        reads = []
        m.d.comb += self.table.ready.eq(1)
        for lane in range(self._lanes):
            lut = Memory(shape=signed(8), depth=256, init=[])
            m.submodules[f"lut_{lane}"] = lut
            write = lut.write_port()
            reads.append(lut.read_port())
            m.d.comb += [
                write.addr.eq(self.table.payload.index),
                write.data.eq(self.table.payload.value),
                write.en.eq(self.table.valid),
            ]

        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        for lane, read in enumerate(reads):
            m.d.comb += [
                read.en.eq(advance),
                read.addr.eq(self.i.payload[lane].as_unsigned()),
                self.o.payload[lane].eq(read.data),
            ]
        with m.If(advance):
            m.d.sync += self.o.valid.eq(self.i.valid)
        return m
