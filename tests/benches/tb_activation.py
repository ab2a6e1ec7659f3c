"""cocotb tests of the activation unit against its golden model (run by test_activation.py).

Environment: LANES (the build), SEED.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock

from rtl.activation import ActivationTableWrite
from sim.cocotb_stream import StreamDriver, StreamMonitor, reset_dut
from sim.golden import activation as golden
from sim.payload import pack, pack_lanes, unpack_lanes

LANES = int(os.environ.get("LANES", "1"))
SEED = int(os.environ.get("SEED", "1"))

TABLES = [("gelu", 0.05, 0.04, 0, 0), ("gelu_tanh", 0.1, 0.05, 3, -20),
          ("silu", 0.02, 0.125, -5, 7), ("relu", 0.08, 0.01, 0, -128)]


async def reset(dut):
    await reset_dut(dut)


async def run_phases(dut, stall, backpressure, count):
    Clock(dut.clk, 10, unit="ns").start()
    table_in = StreamDriver(dut, "table", dut.clk, stall=stall, seed=SEED)
    codes_in = StreamDriver(dut, "i", dut.clk, stall=stall, seed=SEED + 1)
    out = StreamMonitor(dut, "o", dut.clk, backpressure=backpressure, seed=SEED + 2)
    await reset(dut)
    rng = np.random.default_rng(SEED)
    for function, s_in, s_out, zp_in, zp_out in TABLES:
        table = golden.build_table(function, s_in, s_out, zp_in, zp_out)
        # Table reload between layers: all writes land before the layer's codes start.
        await table_in.send(pack(ActivationTableWrite, {"index": np.arange(256), "value": table}))
        codes = np.concatenate([np.arange(-128, 128), rng.integers(-128, 128, count)])
        codes = codes[: len(codes) // LANES * LANES].reshape(-1, LANES)
        out.received = []
        send = cocotb.start_soon(codes_in.send(pack_lanes(codes, 8)))
        got = await out.receive(len(codes), max_cycles=100 + 20 * len(codes))
        await send
        got = unpack_lanes(got, 8, LANES).astype(np.int64)
        got = np.where(got >= 128, got - 256, got)
        expected = golden.apply(table, codes)
        bad = np.argwhere(got != expected)
        assert len(bad) == 0, (f"{function}: {len(bad)} mismatches, first at {bad[0].tolist()}: "
                               f"code {codes[tuple(bad[0])]} got {got[tuple(bad[0])]} "
                               f"expected {expected[tuple(bad[0])]}")
    dut._log.info("%d tables, no mismatch", len(TABLES))


@cocotb.test()
async def every_code_and_random(dut):
    """All 256 codes and random codes for four reloaded tables, no stalls."""
    await run_phases(dut, 0.0, 0.0, 4000)


@cocotb.test()
async def stalls_and_backpressure(dut):
    """The same under random input stalls and output backpressure."""
    await run_phases(dut, 0.3, 0.4, 2000)
