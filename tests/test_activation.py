"""Activation unit: golden tables vs float64 with exact rounding, RTL vs golden in Amaranth
and on Verilator (table reloads, stalls, backpressure)."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from rtl.activation import Activation, ActivationTableWrite
from sim.cocotb_runner import run_cocotb
from sim.golden import activation as golden
from sim.payload import pack, pack_lanes, unpack_lanes
from sim.pysim import output_timing, send_stream


# Scales as a compiler would see them around an FFN: input scales of a few hundredths,
# output scales from 1/64 to 1/8, zero points on both sides.
TABLE_CASES = [
    (function, s_in, s_out, zp_in, zp_out)
    for function in ("gelu", "gelu_tanh", "silu", "relu")
    for s_in, s_out, zp_in, zp_out in [(0.05, 0.04, 0, 0), (0.03125, 0.015625, 0, 0),
                                       (0.1, 0.05, 3, -20), (0.02, 0.125, -5, 7),
                                       (0.08, 0.01, 0, -128)]
]


# --- independent per-element reference (Python floats, exact rational rounding) -------------

def _f_python(function, x):
    if function == "gelu":
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if function == "gelu_tanh":
        return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if function == "silu":
        return x / (1.0 + math.exp(-x))
    if function == "relu":
        return max(x, 0.0)
    raise ValueError(function)


def reference_entry(function, code, s_in, s_out, zp_in, zp_out):
    """Correctly rounded (ties away from zero) entry, and the distance of the exact
    float64 quotient from the nearest tie (to show the rounding is robust)."""
    v = Fraction(_f_python(function, (code - zp_in) * s_in)) / Fraction(s_out)
    magnitude = math.floor(abs(v) + Fraction(1, 2))
    rounded = magnitude if v >= 0 else -magnitude
    tie_distance = abs(abs(v) - math.floor(abs(v)) - Fraction(1, 2))
    return min(max(rounded + zp_out, -128), 127), tie_distance


@pytest.mark.parametrize("function,s_in,s_out,zp_in,zp_out", TABLE_CASES)
def test_table_entries_exact(function, s_in, s_out, zp_in, zp_out):
    table = golden.build_table(function, s_in, s_out, zp_in, zp_out)
    assert table.shape == (256,)
    for code in range(-128, 128):
        expected, tie_distance = reference_entry(function, code, s_in, s_out, zp_in, zp_out)
        assert table[code & 0xFF] == expected, (function, code)
    # The table spans a useful range (so it is not trivially constant).
    assert len(set(table.tolist())) > 20


def test_float_functions():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    assert np.allclose(golden.gelu(x), [-0.0040496977, -0.1586552539, 0.0, 0.3457312616, 1.9544997361])
    assert np.allclose(golden.gelu_tanh(x), [-0.0036373920, -0.1588080094, 0.0, 0.3457140, 1.9545977])
    assert np.allclose(golden.silu(x), [-0.1422776, -0.2689414, 0.0, 0.3112296, 1.7615942])
    assert golden.silu(np.array([-1000.0, 1000.0])).tolist() == [-0.0, 1000.0]
    assert golden.relu(x).tolist() == [0.0, 0.0, 0.0, 0.5, 2.0]


def test_round_half_away():
    assert golden.round_half_away([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49]).tolist() == [
        -3, -2, -1, 1, 2, 3, 0]
    # ReLU of code 1 at s_in / s_out = 1/2 is exactly 0.5: rounds to 1.
    assert golden.build_table("relu", 0.5, 1.0)[1] == 1
    assert golden.build_table("relu", 0.5, 1.0)[3] == 2


def test_apply_and_checks():
    table = golden.build_table("relu", 0.1, 0.1)
    assert golden.apply(table, [-128, -1, 0, 5, 127]).tolist() == [0, 0, 0, 5, 127]
    with pytest.raises(ValueError):
        golden.apply(table, [128])
    with pytest.raises(ValueError):
        golden.build_table("gelu", -1.0, 0.1)
    with pytest.raises(ValueError):
        golden.build_table("gelu", 0.1, 0.1, output_zero_point=128)


# --- RTL in Amaranth's simulator ----------------------------------------------------------------

def run_activation(dut, tables_and_codes, *, stall=0.0, backpressure=0.0, seed=0):
    """For each ``(table, codes)`` (codes: transfers x lanes): load the table, stream the
    codes, collect the outputs; returns a list of output arrays."""
    results = []
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    loaded = []  # per phase, set when its table is loaded
    done = []  # per phase, set when its outputs are all in

    async def source(ctx):
        for phase, (table, codes) in enumerate(tables_and_codes):
            while len(done) < phase:
                await ctx.tick()
            writes = pack(ActivationTableWrite, {"index": np.arange(256), "value": table})
            await send_stream(ctx, dut.table, writes)
            loaded.append(phase)
            await send_stream(ctx, dut.i, pack_lanes(codes, 8), stall=stall, rng=rng_in)

    async def sink(ctx):
        for table, codes in tables_and_codes:
            out = []
            while len(out) < len(codes):
                ready = not (backpressure and rng_out.random() < backpressure)
                ctx.set(dut.o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, Value.cast(dut.o.payload))
                if valid and ready:
                    out.append(payload)
            ctx.set(dut.o.ready, 0)
            results.append(unpack_lanes(out, 8, dut.lanes).astype(np.int64))
            done.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return [np.where(r >= 128, r - 256, r) for r in results]


def phases(rng, lanes, count):
    out = []
    for function, s_in, s_out, zp_in, zp_out in [TABLE_CASES[0], TABLE_CASES[6], TABLE_CASES[12]]:
        table = golden.build_table(function, s_in, s_out, zp_in, zp_out)
        codes = np.concatenate([np.arange(-128, 128), rng.integers(-128, 128, count)])
        codes = codes[: len(codes) // lanes * lanes].reshape(-1, lanes)
        out.append((table, codes))
    return out


@pytest.mark.parametrize("lanes,stall,backpressure", [(1, 0, 0), (1, 0.3, 0.4), (3, 0.2, 0.5)])
def test_rtl_matches_golden_pysim(lanes, stall, backpressure):
    rng = np.random.default_rng(lanes)
    cases = phases(rng, lanes, 300)
    got = run_activation(Activation(lanes=lanes), cases, stall=stall, backpressure=backpressure)
    for (table, codes), out in zip(cases, got):
        expected = golden.apply(table, codes)
        bad = np.argwhere(out != expected)
        assert len(bad) == 0, f"{len(bad)} mismatches, first {bad[0]}: got {out[tuple(bad[0])]} " \
                              f"expected {expected[tuple(bad[0])]} for code {codes[tuple(bad[0])]}"


def test_latency_pysim():
    """One transfer per cycle, outputs `latency` cycles after their inputs (an unloaded
    table reads 0)."""
    dut = Activation()
    seen = output_timing(dut, list(range(8)))
    assert [c for c, _ in seen] == [dut.latency + k for k in range(8)]
    assert all(p == 0 for _, p in seen)


@pytest.mark.cocotb
def test_rtl_matches_golden_verilator():
    run_cocotb(Activation(lanes=2), name="activation_l2", test_module="tests.benches.tb_activation",
               extra_env={"SEED": 5, "LANES": 2})
