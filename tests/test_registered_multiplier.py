"""RegisteredMultiplier (rtl/matmul/registered_multiplier.py), its behavioral implementation
in Amaranth's simulator: the PEs' signed 9 x 9 and the range check's unsigned 12 x 16, the
product two enabled cycles after its operands; and the widths a MULT18X18D cannot take."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.matmul.registered_multiplier import RegisteredMultiplier


@pytest.mark.parametrize("a_width, b_width, is_signed", [(9, 9, True), (12, 16, False)])
def test_product_two_enabled_cycles_later(a_width, b_width, is_signed):
    rng = np.random.default_rng(a_width)
    dut = RegisteredMultiplier(a_width=a_width, b_width=b_width, is_signed=is_signed)
    low = (lambda w: -(1 << (w - 1))) if is_signed else (lambda w: 0)
    high = (lambda w: (1 << (w - 1)) - 1) if is_signed else (lambda w: (1 << w) - 1)
    corners = [(x, y) for x in (low(a_width), high(a_width), 0) for y in (low(b_width),
                                                                          high(b_width), 0)]
    pairs = corners + [(int(rng.integers(low(a_width), high(a_width) + 1)),
                        int(rng.integers(low(b_width), high(b_width) + 1))) for _ in range(300)]
    enables = [int(rng.random() < 0.7) for _ in pairs]
    seen = []

    async def bench(ctx):
        history = []      # operands presented in enabled cycles
        for (a, b), en in zip(pairs, enables):
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            if en:
                history.append(a * b)
            await ctx.tick()
            # After the tick: the product of the operands two enabled cycles back.
            if en and len(history) >= 2:
                seen.append((ctx.get(dut.p), history[-2]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) > 150
    assert all(got == want for got, want in seen), [s for s in seen if s[0] != s[1]][:5]


@pytest.mark.parametrize("kwargs", [dict(a_width=19), dict(b_width=0),
                                    dict(implementation="dsp48")])
def test_impossible_multipliers_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        RegisteredMultiplier(**kwargs)
