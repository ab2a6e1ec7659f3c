"""cocotb tests of the LayerNorm unit against its golden model (run by test_layernorm.py).

Built with max_hidden = 1024, one lane. Environment: SEED, INPUT_BITS (8, or 16 for the
INT16-input unit: INT16 random and edge rows against ``layernorm_int16``, plus INT8 rows).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from sim.cocotb_stream import StreamDriver, StreamMonitor
from sim.layernorm_cases import (edge_problems, edge_problems16, make_problem, random_rows,
                                 random_rows16)
from tests.test_layernorm import check, decode, encode

SEED = int(os.environ.get("SEED", "1"))
MAX_HIDDEN = 1024
INPUT_BITS = int(os.environ.get("INPUT_BITS", "8"))


async def run(dut, problems, stall, backpressure):
    Clock(dut.clk, 10, unit="ns").start()
    params = StreamDriver(dut, "params", dut.clk, seed=SEED)
    cmd = StreamDriver(dut, "cmd", dut.clk, stall=stall, seed=SEED + 1)
    data = StreamDriver(dut, "i", dut.clk, stall=stall, seed=SEED + 2)
    out = StreamMonitor(dut, "o", dut.clk, backpressure=backpressure, seed=SEED + 3)
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for p_params, p_cmds, p_inputs, count in encode(problems, MAX_HIDDEN, 1, INPUT_BITS):
        await params.send(p_params)  # reload between "layers": no row in flight
        out.received = []
        tasks = [cocotb.start_soon(cmd.send(p_cmds)), cocotb.start_soon(data.send(p_inputs))]
        got = await out.receive(count, max_cycles=500 + 20 * count)
        for task in tasks:
            await task
        results.append(decode(got, 1))
    check(problems, results)
    dut._log.info("%d problems, %d rows: no mismatch", len(problems),
                  sum(len(p["x"]) for p in problems))


def problems16(rng):
    p16 = dict(rng=rng, input_bits=16, input_scale=0.002)
    out = [make_problem(random_rows16(rng, 6, 1024), eps=1e-5, **p16),
           make_problem(random_rows16(rng, 4, 1024), rms=True, **p16),
           make_problem(random_rows16(rng, 10, 384), **p16)]
    out += edge_problems16(1024, rng)
    out += [make_problem(random_rows16(rng, 5, n), rms=bool(n % 2), **p16) for n in (1, 3, 17, 100)]
    out += [make_problem(random_rows(rng, 4, 384), rng=rng)]   # INT8 rows, sign-extended
    return out


def problems(rng):
    if INPUT_BITS == 16:
        return problems16(rng)
    out = [make_problem(random_rows(rng, 6, 1024), rng=rng),
           make_problem(random_rows(rng, 4, 1024), rng=rng, rms=True),
           make_problem(random_rows(rng, 10, 384), rng=rng, eps=1e-12, input_scale=0.08)]
    out += edge_problems(1024, rng)
    out += [make_problem(random_rows(rng, 5, n), rng=rng, rms=bool(n % 2)) for n in (1, 3, 17, 100)]
    return out


@cocotb.test()
async def random_and_edge_rows(dut):
    """Random rows at N = 1024 and 384 (both modes), constant rows, huge and tiny
    variance, extreme gamma/beta, short rows; no stalls."""
    await run(dut, problems(np.random.default_rng(SEED)), 0.0, 0.0)


@cocotb.test()
async def stalls_and_backpressure(dut):
    """The same kinds of row under random input stalls and output backpressure."""
    rng = np.random.default_rng(SEED + 1)
    if INPUT_BITS == 16:
        p16 = dict(rng=rng, input_bits=16, input_scale=0.002)
        ps = [make_problem(random_rows16(rng, 3, 1024), **p16),
              make_problem(random_rows16(rng, 3, 1024), rms=True, **p16)]
        ps += edge_problems16(256, rng)[:8]
        ps += [make_problem(random_rows16(rng, 6, n), **p16) for n in (1, 9, 40)]
        await run(dut, ps, 0.3, 0.4)
        return
    ps = [make_problem(random_rows(rng, 3, 1024), rng=rng),
          make_problem(random_rows(rng, 3, 1024), rng=rng, rms=True)]
    ps += edge_problems(256, rng)[:4]
    ps += [make_problem(random_rows(rng, 6, n), rng=rng) for n in (1, 9, 40)]
    await run(dut, ps, 0.3, 0.4)
