"""The dual 8 x 8 multiplier of the PE pairs: the Amaranth implementation in Amaranth's
simulator and the iCE40 ``SB_MAC16`` configuration on Verilator (with Yosys' own simulation
model of the primitive), both against sim/golden/multiplier_pair.py, cycle by cycle."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.matmul.multiplier_pair import MultiplierPair
from sim.cocotb_runner import run_cocotb
from sim.golden import multiplier_pair as golden
from sim.toolchain import ice40_cell_model


def test_golden_against_integer_arithmetic():
    a = np.arange(-128, 128).repeat(256)
    b = np.tile(np.arange(-128, 128), 256)
    c = np.random.default_rng(1).integers(0, 1 << 16, a.size)
    exact = a * b + c                                   # Python-integer reference
    assert (golden.multiply_add(a, b, c) == exact % 65536).all()
    assert golden.multiply_add(-128, -128, 0xFFFF) == (16384 + 65535) % 65536
    with pytest.raises(ValueError, match="signed 8-bit"):
        golden.multiply_add(128, 1, 0)
    with pytest.raises(ValueError, match="16-bit"):
        golden.multiply_add(1, 1, -1)


def test_golden_timing():
    """a, b of cycle 0 and c of the next enabled cycle come out after the third enabled edge."""
    a, b, c = [5, 0, 0, 0, 0], [-7, 0, 0, 0, 0], [0, 0, 100, 0, 0]
    en = [1, 0, 1, 1, 1]
    assert golden.run(a, b, c, en).tolist() == [0, 0, 0, (-35 + 100) % 65536, 0]


def test_behavioral_random_with_enable_gaps():
    rng = np.random.default_rng(3)
    n = 1500
    stim = {f"a_{i}": rng.integers(-128, 128, n) for i in (0, 1)}
    stim |= {f"b_{i}": rng.integers(-128, 128, n) for i in (0, 1)}
    stim |= {f"c_{i}": rng.integers(0, 1 << 16, n) for i in (0, 1)}
    for i in (0, 1):
        stim[f"a_{i}"][:4], stim[f"b_{i}"][:4] = [-128, -128, 127, 0], [-128, 127, -128, 0]
    stim["en"] = (rng.random(n) >= 0.25).astype(int)
    dut = MultiplierPair("behavioral")
    got = {0: [], 1: []}

    async def bench(ctx):
        for t in range(n):
            for name, values in stim.items():
                ctx.set(getattr(dut, name), int(values[t]))
            await ctx.tick()
            for i in (0, 1):
                got[i].append(ctx.get(getattr(dut, f"p_{i}")))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for i in (0, 1):
        expected = golden.run(stim[f"a_{i}"], stim[f"b_{i}"], stim[f"c_{i}"], stim["en"])
        assert got[i] == expected.tolist(), f"lane {i}"


def test_implementation_name_is_checked():
    with pytest.raises(ValueError, match="implementation must be one of"):
        MultiplierPair("dsp48e1")


@pytest.mark.cocotb
def test_sb_mac16_exhaustive_verilator():
    """The SB_MAC16 instance (8 x 8 mode, signed, A/B/C/D, product and output registers,
    C/D added) on Yosys' model of the primitive: every signed 8 x 8 pair on both halves."""
    run_cocotb(MultiplierPair("sb_mac16"), name="multiplier_pair_sb_mac16",
               extra_verilog=ice40_cell_model("SB_MAC16"),
               test_module="tests.benches.tb_multiplier_pair", testcase="exhaustive")
