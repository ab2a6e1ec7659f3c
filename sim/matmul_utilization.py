"""cocotb module measuring the matmul engine's utilization from its hardware counters.

Environment: ROWS, COLS, MAX_ROWS (the engine's build), MODE (a MatmulMode name),
M, K, N (the problem), RESULT (JSON file to write). Streams every pass with no
stalls and no backpressure, checks the result against the golden model (a
benchmark of a wrong answer is worthless), and writes the engine's
``cycle_count`` and ``row_count`` with the useful MACs.
"""

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge, ReadOnly

from jalapeno.matmul_tiling import assemble, plan_matmul
from rtl.matmul.mode import MatmulMode
from sim.golden import matmul as golden
from sim.matmul_cases import random_codes
from tests.benches.tb_matmul_engine import EngineTestbench, encode_passes


@cocotb.test()
async def utilization(dut):
    rows, cols = int(os.environ["ROWS"]), int(os.environ["COLS"])
    mode = MatmulMode[os.environ["MODE"]]
    m, k, n = (int(os.environ[x]) for x in "MKN")
    rng = np.random.default_rng(0)
    a = random_codes(rng, (m, k), mode, "a", special_fraction=0)
    w = random_codes(rng, (k, n), mode, "w", special_fraction=0)
    passes = plan_matmul(a, w, mode, rows=rows, cols=cols, max_rows=int(os.environ["MAX_ROWS"]))
    tb = EngineTestbench(dut, 0.0, 0)
    await tb.reset()
    result_count = sum(p.m for p in passes if p.emit)
    values, errors = await tb.run(*encode_passes(passes), result_count)
    await RisingEdge(dut.clk)
    await ReadOnly()
    cycles = int(dut.cycle_count.value)
    rows_done = int(dut.row_count.value)
    got = assemble(passes, values, m, n).view(np.uint32)
    assert not errors.any()
    assert np.array_equal(got, golden.matmul(a, w, mode).view(np.uint32)), "wrong result"
    useful_macs = m * k * n
    with open(os.environ["RESULT"], "w") as f:
        json.dump({"cycles": cycles, "rows": rows_done, "passes": len(passes),
                   "useful_macs": useful_macs,
                   "utilization": useful_macs / (cycles * rows * cols)}, f)
    await FallingEdge(dut.clk)
