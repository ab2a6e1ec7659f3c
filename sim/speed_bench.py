"""cocotb module measuring how fast a design simulates under the cocotb harness.

Streams ``SPEED_CYCLES`` random FP8 operand pairs through the DUT (no stalls)
with the same driver and monitor the tests use, and writes the simulated cycle
count and the wall time to the JSON file named by ``SPEED_RESULT``.
"""

import json
import os
import time

import cocotb
import numpy as np
from cocotb.utils import get_sim_time

from rtl.numerics.fp8_multiplier import FP8Operands
from sim.cocotb_stream import StreamTestbench
from sim.payload import pack


@cocotb.test()
async def stream_speed(dut):
    n = int(os.environ.get("SPEED_CYCLES", "50000"))
    rng = np.random.default_rng(0)
    payloads = pack(FP8Operands, dict(a=rng.integers(0, 256, n), b=rng.integers(0, 256, n),
                                      a_format=rng.integers(0, 2, n), b_format=rng.integers(0, 2, n)))
    tb = StreamTestbench(dut)
    await tb.reset()
    start_ns = get_sim_time(unit="ns")
    start = time.perf_counter()
    outputs = await tb.transfer(payloads)
    wall = time.perf_counter() - start
    cycles = round((get_sim_time(unit="ns") - start_ns) / 10)
    assert len(outputs) == n
    with open(os.environ["SPEED_RESULT"], "w") as f:
        json.dump({"cycles": cycles, "seconds": wall, "transfers": n}, f)
