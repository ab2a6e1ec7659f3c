"""A sequential checker of 2-D address ranges, one multiplier for all of an instruction's operands."""

from amaranth.hdl import Array, Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..matmul.registered_multiplier import RegisteredMultiplier, check_registered_multiplier


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
    :attr:`latency` cycles later, ``count + 3`` (``count + 4`` with ``product_stage``;
    rows are at most 24 bits, the rest ``width`` bits), with ``bad`` valid (and held
    until the next start).

    Three pipeline stages, so that no path runs from the instruction's fields through the
    extent multiplexer, the multiplier and the comparison in one cycle (the ULX3S core's
    critical path when it was one stage):

    1. the fields of the extent at the running index are registered, from registers
       that follow the connected values every cycle: the first extent is read in the
       cycle after ``start``, so the values of the ``start`` cycle are already in them,
       and nothing of the unit's decoding (the multiplexers and products that form its
       extents from the instruction) reaches the extent multiplexer in the same cycle.
       (This stage was the ULX3S core's critical path when the extents came straight
       from the instruction: 15.7 ns at 60 MHz; and before that when it also formed
       ``rows - 1`` and ``base + cols``.) ``rows * stride`` starts here too, as four
       partial products of 12-bit halves of ``rows`` and ``width / 2``-bit halves of
       ``stride``: each fits one DSP multiplier with no adder behind it;
    2. ``rows * stride`` from the partial products (the whole product in one stage,
       DSPs and their adders, was the ULX3S core's critical path: 15.4 ns at 60 MHz),
       the slack ``limit + stride - base - cols`` (signed) and whether the extent is
       checked at all;
    3. ``rows * stride > slack``: for ``rows >= 1`` the same as ``base + (rows - 1) *
       stride + cols > limit`` (exact: nothing is truncated, ``stride`` has at most
       ``width`` bits, ``rows`` at most 24). One comparison: with
       the add ``rows * stride + base + cols`` in this stage too, it was the ULX3S core's
       critical path at 82 MHz with some placements (12.1 ns).

    With ``product_stage`` the partial products come from stage 1's registers in a
    stage of their own, between stages 1 and 2: no path then runs from the extent
    multiplexer through the multipliers (the ULX3S core's critical path, 15.4 ns, with
    some placements), only into their operand registers. The partial products are then four
    :class:`~rtl.matmul.registered_multiplier.RegisteredMultiplier` (unsigned 12 x
    ``width / 2``) whose operand registers are stage 1's and product registers the
    product stage's: with ``multiplier="mult18x18d"`` those are the DSPs' own registers,
    so no path runs through a DSP either (the ULX3S core's path at 87.5 MHz, 11.4 ns).
    """

    def __init__(self, count, width=32, product_stage=False, multiplier="behavioral"):
        try:
            check_registered_multiplier(multiplier)
            if product_stage and width > 36:
                raise ValueError(f"The product stage's multipliers take halves of at most 18 "
                                 f"bits (a MULT18X18D's): width {width} is more than 36")
        except ValueError:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._count = count
        self._width = width
        self._product_stage = bool(product_stage)
        self._multiplier = multiplier
        self._extents = None
        super().__init__({"start": In(1), "done": Out(1), "bad": Out(1)})

    @property
    def latency(self):
        """Cycles from ``start`` to ``done``."""
        return self._count + 3 + self._product_stage

    def connect_extents(self, extents):
        assert len(extents) <= self._count
        for e in extents:
            rows_width = e.rows.bit_length() if isinstance(e.rows, int) else len(Value.cast(e.rows))
            if rows_width > 24:
                raise ValueError(f"An extent's rows must fit in 24 bits, not {rows_width}")
        self._extents = list(extents)

    def elaborate(self, platform):
        m = Module()
        w = self._width
        extents = self._extents
        n = len(extents)
        index = Signal(range(n + 1))
        running = Signal()

        def width_of(value):
            return value.bit_length() if isinstance(value, int) else len(Value.cast(value))

        def array(name, least):
            """Every extent's ``name``, registered in signals of at least ``least`` bits
            (wide enough that ``!= 0`` sees every bit of the connected value)."""
            width = max([least] + [width_of(getattr(e, name)) for e in extents])
            signals = Array(Signal(width, name=f"{name}_{i}") for i in range(n))
            for i, e in enumerate(extents):
                m.d.sync += signals[i].eq(getattr(e, name))
            return signals

        rows, strides = array("rows", 24), array("stride", w)
        bases, cols = array("base", w + 1), array("cols", w + 1)
        limits, enables = array("limit", w + 1), array("enable", 1)

        # Stage 1: the extent at ``index``, as connected, and (without ``product_stage``)
        # the partial products.
        sel_rows, sel_stride = Signal(24), Signal(w)
        rows_at, stride_at = Signal(24), Signal(w)
        m.d.comb += [rows_at.eq(rows[index]), stride_at.eq(strides[index])]
        sel_base, sel_cols, sel_limit = Signal(w + 1), Signal(len(cols[0])), Signal(w + 1)
        sel_enable, sel_valid, sel_last = Signal(), Signal(), Signal()
        m.d.sync += [
            sel_rows.eq(rows_at), sel_stride.eq(stride_at),
            sel_base.eq(bases[index]), sel_cols.eq(cols[index]), sel_limit.eq(limits[index]),
            sel_enable.eq(enables[index]),
            sel_valid.eq(running & (index < n)), sel_last.eq(index == n - 1),
        ]
        r_split, s_split = 12, w // 2
        r_halves = (rows_at[:r_split], rows_at[r_split:])
        s_halves = (stride_at[:s_split], stride_at[s_split:])
        partials = {(i, j): Signal(len(r_halves[i]) + len(s_halves[j]), name=f"partial_{i}{j}")
                    for i in range(2) for j in range(2)}
        for (i, j), partial in partials.items():
            if self._product_stage:
                # Operands registered with stage 1, the product in the product stage.
                mul = RegisteredMultiplier(self._multiplier, a_width=len(r_halves[i]),
                                           b_width=len(s_halves[j]), is_signed=False)
                m.submodules[f"partial_{i}{j}"] = mul
                m.d.comb += [mul.a.eq(r_halves[i]), mul.b.eq(s_halves[j]), mul.en.eq(1),
                             partial.eq(mul.p)]
            else:
                m.d.sync += partial.eq(r_halves[i] * s_halves[j])
        if self._product_stage:
            # The other fields wait for the partial products.
            waiting = [sel_rows, sel_stride, sel_base, sel_cols, sel_limit, sel_enable,
                       sel_valid, sel_last]
            delayed = [Signal.like(sig, name=f"{sig.name}_p") for sig in waiting]
            m.d.sync += [d.eq(sig) for d, sig in zip(delayed, waiting)]
            (sel_rows, sel_stride, sel_base, sel_cols, sel_limit, sel_enable, sel_valid,
             sel_last) = delayed
        # Stage 2: the product, the end and the limit.
        product = Signal(24 + w)
        slack_bits = max(len(sel_limit), len(sel_stride), len(sel_base), len(sel_cols)) + 2
        slack = Signal(range(-(2 ** slack_bits), 2 ** slack_bits))
        mul_active, mul_valid, mul_last = Signal(), Signal(), Signal()
        m.d.sync += [
            # low x low and high x high do not overlap: a concatenation, no adder.
            product.eq(Cat(partials[0, 0], partials[1, 1])
                       + (partials[0, 1] << s_split) + (partials[1, 0] << r_split)),
            slack.eq(sel_limit + sel_stride - sel_base - sel_cols),
            mul_active.eq(sel_enable & (sel_rows != 0) & (sel_cols != 0)),
            mul_valid.eq(sel_valid), mul_last.eq(sel_last),
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
            with m.If(mul_active & (product > slack)):
                m.d.sync += self.bad.eq(1)
        finished = Signal()
        m.d.sync += finished.eq(mul_valid & mul_last & ~self.start)
        m.d.comb += self.done.eq(finished)
        return m
