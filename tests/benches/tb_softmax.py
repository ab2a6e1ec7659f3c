"""cocotb tests of the softmax unit against the golden model (run by tests/test_softmax.py).

Parameters come from the environment: MAX_LENGTH, LANES (the unit's build), SEED,
STALL (probability of a stall cycle on every input and of backpressure on the
output), ROWS (how many random rows), SCALE (the score scale the table is built for).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock

from sim import softmax_metrics as cases
from sim.cocotb_stream import StreamDriver, StreamMonitor, reset_dut
from sim.golden import softmax as golden


MAX_LENGTH = int(os.environ.get("MAX_LENGTH", "512"))
LANES = int(os.environ.get("LANES", "1"))
SEED = int(os.environ.get("SEED", "1"))
STALL = float(os.environ.get("STALL", "0"))
ROWS = int(os.environ.get("ROWS", "8"))
SCALE = float(os.environ.get("SCALE", "0.06"))


class SoftmaxTestbench:
    def __init__(self, dut, stall, seed):
        self.dut = dut
        Clock(dut.clk, 10, unit="ns").start()
        self.table = StreamDriver(dut, "table", dut.clk, stall=stall, seed=seed)
        self.cmd = StreamDriver(dut, "cmd", dut.clk, stall=stall, seed=seed + 1)
        self.i = StreamDriver(dut, "i", dut.clk, stall=stall, seed=seed + 2)
        self.o = StreamMonitor(dut, "o", dut.clk, backpressure=stall, seed=seed + 3)

    async def reset(self):
        await reset_dut(self.dut)

    async def run(self, batch, table, seed):
        """Load ``table``, then stream the batch; compare every output with golden."""
        table_p, cmd_p, i_p = cases.encode(batch, LANES, MAX_LENGTH, table, np.random.default_rng(seed))
        expected = cases.expected_outputs(batch, LANES, MAX_LENGTH, table)
        await self.table.send(table_p)
        tasks = [cocotb.start_soon(self.cmd.send(cmd_p)), cocotb.start_soon(self.i.send(i_p))]
        budget = 1000 + 30 * (len(i_p) + len(expected[0]) + 30 * len(cmd_p))
        self.o.received = []
        out = await self.o.receive(len(expected[0]), max_cycles=budget)
        for task in tasks:
            await task
        cases.compare(cases.decode(out, LANES), expected, batch, LANES)
        self.dut._log.info(f"{len(batch['scores'])} rows, {len(out)} output transfers: all match golden")


@cocotb.test()
async def edge_and_error_rows(dut):
    """Constant rows, dominant element, very negative rows, length 1, maximal length,
    padding, causal, fully masked, descriptor errors, mixed with random rows."""
    rng = np.random.default_rng(SEED)
    batch = cases.concat_rows(cases.edge_rows(MAX_LENGTH, rng), cases.error_rows(MAX_LENGTH, rng),
                              cases.random_rows(rng, 4, MAX_LENGTH))
    tb = SoftmaxTestbench(dut, STALL, SEED)
    await tb.reset()
    await tb.run(batch, golden.exp_table(SCALE), SEED)


@cocotb.test()
async def random_rows(dut):
    """ROWS random rows (random counts, lengths, causal masks), then a table reload for a
    different scale and more rows: zero mismatches."""
    rng = np.random.default_rng(SEED + 100)
    tb = SoftmaxTestbench(dut, STALL, SEED + 5)
    await tb.reset()
    await tb.run(cases.random_rows(rng, ROWS, MAX_LENGTH), golden.exp_table(SCALE), SEED)
    await tb.run(cases.random_rows(rng, max(2, ROWS // 4), MAX_LENGTH), golden.exp_table(SCALE * 3.7),
                 SEED + 1)
