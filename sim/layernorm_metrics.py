"""Bench metrics of the LayerNorm unit (called by scripts/bench.py).

- ``layernorm.max_err_lsb``: the golden model's largest distance (in output LSB) from
  the correctly rounded float64 LayerNorm/RMSNorm over 10,000 random rows of 384
  (each mode) and the edge cases at N = 1024;
- ``layernorm.elements_per_cycle``: steady-state throughput of the RTL (one lane) in
  Amaranth's simulator: rows of 384 sent back to back with no stalls, output
  elements per cycle between the first output of row 2 and the last of row 5;
- ``rsqrt.max_rel_err``: the measured max relative error of the fixed-point rsqrt.
"""

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

from rtl.layernorm import LayerNorm, layernorm_param_layout, layernorm_row_layout
from sim.golden import layernorm as golden
from sim.layernorm_cases import edge_problems, make_problem, random_rows
from sim.payload import pack, pack_lanes


__all__ = ["bench_layernorm", "max_err_lsb", "elements_per_cycle"]


def max_err_lsb(rows=10_000, n=384, seed=1):
    rng = np.random.default_rng(seed)
    problems = [make_problem(random_rows(rng, rows, n), rng=rng, rms=rms) for rms in (False, True)]
    problems += edge_problems(1024, rng)
    worst = 0
    for p in problems:
        ref = golden.reference_layernorm(p["x"], p["input_scale"], p["gamma"], p["beta"], p["eps"],
                                         p["output_scale"], p["output_zero_point"], p["rms"])
        worst = max(worst, int(np.abs(p["expected"] - golden.reference_codes(ref)).max()))
    return worst


def elements_per_cycle(n=384, rows=5, seed=2):
    """Steady-state output elements per cycle (no stalls, no backpressure); also checks
    the outputs against the golden model."""
    rng = np.random.default_rng(seed)
    p = make_problem(random_rows(rng, rows, n), rng=rng)
    dut = LayerNorm(max_hidden=n)
    params = pack(layernorm_param_layout(n), {"index": np.arange(n), "gamma": p["gamma_q"],
                                              "beta": p["beta_q"]})
    cmds = pack(layernorm_row_layout(n), {"n": np.full(rows, n), "rms": np.zeros(rows, int),
                                          "eps": np.full(rows, p["eps_q"]),
                                          "gamma_frac": np.full(rows, p["gamma_frac"])})
    inputs = pack_lanes(p["x"].reshape(-1, 1), 8)
    out_cycles, outputs = [], []

    async def feed(ctx, port, payloads):
        for payload in payloads:
            ctx.set(port.valid, 1)
            ctx.set(Value.cast(port.payload), payload)
            await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)

    async def source(ctx):
        await feed(ctx, dut.params, params)
        ctx.set(dut.o.ready, 1)
        await feed(ctx, dut.cmd, cmds)

    async def data_source(ctx):
        await ctx.tick().repeat(len(params) + 1)
        await feed(ctx, dut.i, inputs)

    async def sink(ctx):
        cycle = 0
        while len(outputs) < rows * n:
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready,
                                                                  Value.cast(dut.o.payload))
            cycle += 1
            if valid and ready:
                outputs.append(payload - 256 if payload >= 128 else payload)
                out_cycles.append(cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(data_source, background=True)
    sim.add_testbench(sink)
    sim.run()
    if not np.array_equal(np.array(outputs), p["expected"].ravel()):
        raise AssertionError("LayerNorm RTL output differs from the golden model")
    first, last = n, rows * n - 1
    return (last - first) / (out_cycles[last] - out_cycles[first])


def bench_layernorm(results):
    results["layernorm.max_err_lsb"] = max_err_lsb()
    results["layernorm.elements_per_cycle"] = elements_per_cycle()
    results["rsqrt.max_rel_err"] = golden.measure_rsqrt_error()
    return results
