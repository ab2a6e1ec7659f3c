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
    ``count + 3`` cycles later (rows are at most 24 bits, the rest ``width`` bits) with
    ``bad`` valid (and held until the next start).

    Three pipeline stages, so that no path runs from the instruction's fields through the
    extent multiplexer, the multiplier and the comparison in one cycle (the ULX3S core's
    critical path when it was one stage): the extent selected by the running index is
    registered, then ``(rows - 1) * stride``, then ``product + base + cols > limit``.
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
        # Stage 1: the extent at ``index``.
        sel_rows, sel_stride = Signal(24), Signal(w)
        sel_end, sel_limit = Signal(w + 1), Signal(w + 1)
        sel_active, sel_valid, sel_last = Signal(), Signal(), Signal()
        m.d.sync += [
            sel_rows.eq(rows[index]), sel_stride.eq(strides[index]), sel_end.eq(ends[index]),
            sel_limit.eq(limits[index]), sel_active.eq(active[index]),
            sel_valid.eq(running & (index < n)), sel_last.eq(index == n - 1),
        ]
        # Stage 2: the product.
        product = Signal(24 + w)
        mul_end, mul_limit = Signal(w + 1), Signal(w + 1)
        mul_active, mul_valid, mul_last = Signal(), Signal(), Signal()
        m.d.sync += [
            product.eq(sel_rows * sel_stride), mul_end.eq(sel_end), mul_limit.eq(sel_limit),
            mul_active.eq(sel_active), mul_valid.eq(sel_valid), mul_last.eq(sel_last),
        ]
        # Stage 3: the comparison.
        with m.If(self.start):
            m.d.sync += [index.eq(0), running.eq(1), self.bad.eq(0)]
        with m.Elif(running):
            with m.If(index < n):
                m.d.sync += index.eq(index + 1)
            with m.Else():
                m.d.sync += running.eq(0)
        with m.If(mul_valid & ~self.start):
            with m.If(mul_active & (product + mul_end > mul_limit)):
                m.d.sync += self.bad.eq(1)
        finished = Signal()
        m.d.sync += finished.eq(mul_valid & mul_last & ~self.start)
        m.d.comb += self.done.eq(finished)
        return m
