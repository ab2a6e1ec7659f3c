# amaranth: UnusedElaboratable=no
"""RangeCheck (rtl/core/range_check.py): the operand-extent checker of the load, compute and
store units, in the Amaranth simulator against the rule of its docstring, on random and
boundary extents; ``done`` comes exactly ``count + 3`` cycles after ``start`` (``count + 4``
with ``product_stage``)."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.core.range_check import Extent, RangeCheck


COUNT = 4
WIDTH = 16


def fits(base, rows, stride, cols, limit, enable):
    """The rule: an extent fits iff it is off, empty, or its last word lies below ``limit``."""
    return (not enable or rows == 0 or cols == 0
            or base + (rows - 1) * stride + cols <= limit)


def cases(rng, count, width=WIDTH, rows_bits=16, large=False):
    """Extent tuples (base, rows, stride, cols, limit, enable): random, and exactly at the
    limit and one past it. ``large``: rows and strides over their whole ranges too (every
    partial product of the check's multiplier), with limits that such products reach."""
    out = []
    for _ in range(count):
        base, rows = int(rng.integers(0, 1 << width)), int(rng.integers(0, 300))
        stride, cols = int(rng.integers(0, 1 << width)), int(rng.integers(0, 50))
        if large and rng.random() < 0.7:
            rows = int(rng.choice([(1 << rows_bits) - 1, rng.integers(1, 1 << rows_bits)]))
            stride = int(rng.choice([(1 << width) - 1, rng.integers(0, 1 << width)]))
        limit = int(rng.integers(0, 1 << (width + 1)))
        kind = int(rng.choice(3, p=[0.1, 0.8, 0.1]))
        if kind and rows and cols:       # at the limit, or one word past it
            base = int(rng.integers(0, 1 << 12))
            room = (1 << (width + 1)) - 1 - base - cols
            if not large or (rows - 1) * stride > room:
                stride = int(rng.integers(0, 64 if not large else room // max(rows - 1, 1) + 1))
            limit = base + (rows - 1) * stride + cols - int(kind == 2)
        out.append((base, rows, stride, cols, limit, int(rng.random() < 0.9)))
    return out


@pytest.mark.parametrize("width, rows_bits, large, product_stage", [
    (WIDTH, 16, False, False), (32, 24, True, False), (32, 24, True, True)])
def test_range_check_against_the_rule(width, rows_bits, large, product_stage):
    rng = np.random.default_rng(8)
    m = Module()
    signals = [tuple(Signal(bits, name=f"{name}_{i}") for name, bits in
                     (("base", width), ("rows", rows_bits), ("stride", width), ("cols", 16),
                      ("limit", width + 1), ("enable", 1)))
               for i in range(COUNT)]
    m.submodules.dut = dut = RangeCheck(COUNT, width=width, product_stage=product_stage)
    assert dut.latency == COUNT + 3 + product_stage
    dut.connect_extents([Extent(*s) for s in signals])
    programs = [cases(rng, COUNT, width, rows_bits, large) for _ in range(150)]
    programs.append([(0, 1, 0, 1, 1, 1)] * COUNT)                  # all fit exactly
    programs.append([(0, 1, 0, 1, 1, 1)] * (COUNT - 1) + [(1, 1, 0, 1, 1, 1)])  # the last fails
    checked = {"bad": 0, "good": 0}

    async def bench(ctx):
        for extents in programs:
            for sigs, values in zip(signals, extents):
                for sig, value in zip(sigs, values):
                    ctx.set(sig, value)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
                assert cycles <= dut.latency
            assert cycles == dut.latency
            expected_bad = not all(fits(*e) for e in extents)
            assert ctx.get(dut.bad) == expected_bad, extents
            checked["bad" if expected_bad else "good"] += 1
            await ctx.tick()
            assert ctx.get(dut.bad) == expected_bad          # held until the next start

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert checked["bad"] > 20 and checked["good"] > 20


def test_range_check_rows_fit_in_24_bits():
    """The multiplier takes 24-bit rows: a wider rows value is refused when connected, not
    truncated."""
    RangeCheck(1).connect_extents([Extent(Signal(16), Signal(24), Signal(16), Signal(16), 100)])
    with pytest.raises(ValueError, match="24 bits"):
        RangeCheck(1).connect_extents([Extent(Signal(16), Signal(25), Signal(16), Signal(16), 100)])
    with pytest.raises(ValueError, match="24 bits"):
        RangeCheck(1).connect_extents([Extent(0, 1 << 24, 0, 1, 100)])


def test_unknown_multiplier_is_refused():
    with pytest.raises(ValueError, match="implementation must be one of"):
        RangeCheck(2, product_stage=True, multiplier="dsp48")


def test_product_stage_wider_than_the_multipliers_is_refused():
    with pytest.raises(ValueError, match="width 38 is more than 36"):
        RangeCheck(2, width=38, product_stage=True)
