"""A sequential checker of 2-D address ranges, one multiplier for all of an instruction's operands."""

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


__all__ = ["RangeCheck", "Extent"]


class Extent:
    """One operand's footprint: ``rows`` rows of ``cols`` words, row r at ``base + r *
    stride``; it fits iff ``rows == 0``, ``cols == 0`` or ``base + (rows - 1) * stride +
    cols <= limit``. ``enable`` (a 1-bit value) switches the check off."""

    def __init__(self, base, rows, stride, cols, limit, enable=1):
        self.base, self.rows, self.stride, self.cols = base, rows, stride, cols
        self.limit, self.enable = limit, enable


class RangeCheck(wiring.Component):
    """Checks up to ``count`` extents, one per cycle through one multiplier.

    Connect the extents' values with :meth:`connect_extents` (they must stay stable
    from ``start`` to ``done``). A pulse on ``start`` begins; ``done`` pulses
    ``count + 2`` cycles later (rows are at most 24 bits, the rest ``width`` bits) with ``bad`` valid (and held until the next start).
    """

    def __init__(self, count, width=32):
        self._count = count
        self._width = width
        self._extents = None
        super().__init__({"start": In(1), "done": Out(1), "bad": Out(1)})

    def connect_extents(self, extents):
        assert len(extents) <= self._count
        self._extents = list(extents)

    def elaborate(self, platform):
        m = Module()
        w = self._width
        extents = self._extents
        n = len(extents)
        index = Signal(range(n + 1))
        running = Signal()
        rows = Array(Signal(24, name=f"rows_{i}") for i in range(n))
        strides = Array(Signal(w, name=f"stride_{i}") for i in range(n))
        ends = Array(Signal(w + 1, name=f"end_{i}") for i in range(n))
        limits = Array(Signal(w + 1, name=f"limit_{i}") for i in range(n))
        active = Array(Signal(name=f"active_{i}") for i in range(n))
        for i, e in enumerate(extents):
            m.d.comb += [
                rows[i].eq(e.rows - 1),
                strides[i].eq(e.stride),
                ends[i].eq(e.base + e.cols),
                limits[i].eq(e.limit),
                active[i].eq(e.enable & (e.rows != 0) & (e.cols != 0)),
            ]
        product = Signal(24 + w)
        checked = Signal(range(n + 1))
        checking = Signal()
        m.d.sync += [product.eq(rows[index] * strides[index]), checked.eq(index),
                     checking.eq(running & (index < n))]
        with m.If(self.start):
            m.d.sync += [index.eq(0), running.eq(1), self.bad.eq(0)]
        with m.Elif(running):
            with m.If(index < n):
                m.d.sync += index.eq(index + 1)
        with m.If(checking):
            with m.If(active[checked] & (product + ends[checked] > limits[checked])):
                m.d.sync += self.bad.eq(1)
            with m.If(checked == n - 1):
                m.d.sync += running.eq(0)
        finished = Signal()
        m.d.sync += finished.eq(checking & (checked == n - 1))
        m.d.comb += self.done.eq(finished)
        return m
