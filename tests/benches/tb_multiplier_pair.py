"""cocotb test of the multiplier pair against its golden model (run by test_multiplier_pair.py)."""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from sim.golden import multiplier_pair as golden


def stimulus(seed):
    """Every (a, b) pair of signed 8-bit values on each lane (in different orders), random
    16-bit addends with their extremes, ``en`` low in about one cycle in five."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij"), -1)
    pairs = grid.reshape(-1, 2)
    lanes = [pairs, pairs[rng.permutation(len(pairs))]]
    n = len(pairs) + 8                                 # flush the pipeline at the end
    stim = {}
    for i, lane in enumerate(lanes):
        stim[f"a_{i}"] = np.concatenate([lane[:, 0], np.zeros(8, dtype=np.int64)])
        stim[f"b_{i}"] = np.concatenate([lane[:, 1], np.zeros(8, dtype=np.int64)])
        c = rng.integers(0, 1 << 16, n)
        c[rng.random(n) < 0.1] = 0xFFFF
        c[rng.random(n) < 0.1] = 0
        stim[f"c_{i}"] = c
    stim["en"] = (rng.random(n) >= 0.2).astype(np.int64)
    stim["en"][-8:] = 1
    return stim


@cocotb.test()
async def exhaustive(dut):
    stim = stimulus(int(os.environ.get("SEED", "1")))
    n = len(stim["en"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    got = {0: np.zeros(n, dtype=np.int64), 1: np.zeros(n, dtype=np.int64)}
    ports = {name: getattr(dut, name) for name in stim}
    outputs = [dut.p_0, dut.p_1]
    masks = {name: 0xFF if name[0] in "ab" else 0xFFFF for name in stim}
    columns = {name: [int(v) & masks[name] for v in values] for name, values in stim.items()}
    # Inputs change and outputs are read at falling edges: one await per cycle.
    await FallingEdge(dut.clk)
    for t in range(n):
        for name, port in ports.items():
            port.value = columns[name][t]
        await FallingEdge(dut.clk)                   # the rising edge of cycle t is behind
        for i in (0, 1):
            got[i][t] = outputs[i].value.to_unsigned()
    for i in (0, 1):
        expected = golden.run(stim[f"a_{i}"], stim[f"b_{i}"], stim[f"c_{i}"], stim["en"])
        bad = np.flatnonzero(got[i] != expected)
        assert len(bad) == 0, (
            f"lane {i}: {len(bad)} mismatches of {n} cycles, first at cycle {bad[0]}: "
            f"got {got[i][bad[0]]:#06x}, expected {expected[bad[0]]:#06x}")
    dut._log.info(f"{n} cycles, both lanes: every signed 8 x 8 pair, zero mismatches")
