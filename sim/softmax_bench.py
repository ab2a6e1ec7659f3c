"""cocotb module measuring the softmax unit's streaming rate and latency.

Streams ``ROWS`` back-to-back rows of ``MAX_LENGTH`` random INT8 scores (no
stalls, no backpressure) and writes to the JSON file named by ``RESULT``:

- ``elements_per_cycle``: elements output between the first output of row 2 and
  the last output of the final row, divided by the cycles that span (steady
  state: row 1's fill is excluded);
- ``latency_cycles``: cycles from row 1's first input transfer to its first output.

Every output is also checked against the golden model. Called by
:func:`sim.softmax_metrics.bench_softmax`.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim import softmax_metrics as cases
from sim.cocotb_stream import StreamDriver
from sim.golden import softmax as golden


@cocotb.test()
async def streaming_rate(dut):
    max_length = int(os.environ.get("MAX_LENGTH", "512"))
    lanes = int(os.environ.get("LANES", "1"))
    rows = int(os.environ.get("ROWS", "8"))
    rng = np.random.default_rng(0)
    batch = cases.make_rows([rng.integers(-128, 128, max_length) for _ in range(rows)])
    table = golden.exp_table(0.05)
    table_p, cmd_p, i_p = cases.encode(batch, lanes, max_length, table)
    expected = cases.expected_outputs(batch, lanes, max_length, table)

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await StreamDriver(dut, "table", dut.clk).send(table_p)
    cocotb.start_soon(StreamDriver(dut, "cmd", dut.clk).send(cmd_p))
    cocotb.start_soon(StreamDriver(dut, "i", dut.clk).send(i_p))

    dut.o__ready.value = 1
    outputs, out_cycles, first_in = [], [], None
    cycle = 0
    while len(outputs) < len(expected[0]):
        # Sample in the second half of each cycle: valid and ready there are a transfer
        # at the next rising edge (the drivers act at the falling edge).
        await FallingEdge(dut.clk)
        await ReadOnly()
        cycle += 1
        assert cycle < 100 * len(expected[0]) + 1000, "softmax bench timed out"
        if first_in is None and dut.i__valid.value and dut.i__ready.value:
            first_in = cycle
        if dut.o__valid.value:
            outputs.append(dut.o__payload.value.to_unsigned())
            out_cycles.append(cycle)
    cases.compare(cases.decode(outputs, lanes), expected, batch, lanes)

    per_row = -(-max_length // lanes)
    start, stop = out_cycles[per_row], out_cycles[-1]
    elements = (rows - 1) * max_length
    result = {
        "elements_per_cycle": elements / (stop - start + 1),
        "latency_cycles": out_cycles[0] - first_in,
        "rows": rows,
        "max_length": max_length,
        "lanes": lanes,
    }
    with open(os.environ["RESULT"], "w") as f:
        json.dump(result, f)
