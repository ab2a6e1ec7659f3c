"""cocotb tests of the matmul tile engine against the golden model (run by test_matmul_engine.py).

Parameters come from the environment: ROWS, COLS, MAX_ROWS, FP8 (the engine's
build), SEED, STALL (probability of a stall cycle on every input and of
backpressure on the output), PROBLEMS (how many random matrix products).
"""

import os

import cocotb
import numpy as np

from jalapeno.matmul_tiling import assemble, plan_matmul
from rtl.matmul.engine import matmul_pass_layout
from rtl.matmul.mode import MatmulMode
from sim.cocotb_stream import StreamDriver, StreamMonitor, reset_dut
from sim.golden import matmul as golden
from sim.matmul_cases import cancellation_problems, encode_passes, random_codes
from sim.payload import pack, pack_lanes, unpack_lanes
from cocotb.clock import Clock


ROWS = int(os.environ.get("ROWS", "4"))
COLS = int(os.environ.get("COLS", "4"))
MAX_ROWS = int(os.environ.get("MAX_ROWS", "32"))
FP8 = os.environ.get("FP8", "1") == "1"
SEED = int(os.environ.get("SEED", "1"))
STALL = float(os.environ.get("STALL", "0"))
PROBLEMS = int(os.environ.get("PROBLEMS", "12"))


class EngineTestbench:
    def __init__(self, dut, stall, seed):
        self.dut = dut
        Clock(dut.clk, 10, unit="ns").start()
        self.cmd = StreamDriver(dut, "cmd", dut.clk, stall=stall, seed=seed)
        self.weights = StreamDriver(dut, "weights", dut.clk, stall=stall, seed=seed + 1)
        self.a = StreamDriver(dut, "a", dut.clk, stall=stall, seed=seed + 2)
        self.c = StreamMonitor(dut, "c", dut.clk, backpressure=stall, seed=seed + 3)

    async def reset(self):
        await reset_dut(self.dut)

    async def run(self, commands, weight_rows, a_rows, result_count):
        """Send every pass; return the result rows as (values, errors)."""
        tasks = [cocotb.start_soon(self.cmd.send(commands)),
                 cocotb.start_soon(self.weights.send(weight_rows)),
                 cocotb.start_soon(self.a.send(a_rows))]
        budget = 200 + 30 * (len(commands) * (ROWS + COLS + 8) + len(a_rows) + len(weight_rows))
        out = await self.c.receive(result_count, max_cycles=budget)
        for task in tasks:
            await task
        values = unpack_lanes(out, 32, COLS)
        errors = np.array([(int(p) >> (32 * COLS)) & 1 for p in out], dtype=np.int64)
        return values, errors



def modes():
    return list(MatmulMode) if FP8 else [MatmulMode.INT8, MatmulMode.UINT8]


def random_problem(rng, mode):
    m = int(rng.choice([0, 1, 2, rng.integers(1, 2 * MAX_ROWS + 3)]))
    k = int(rng.choice([0, 1, ROWS, ROWS + 1, rng.integers(1, 3 * ROWS + 2)]))
    n = int(rng.choice([1, COLS, COLS + 1, rng.integers(1, 2 * COLS + 2)]))
    return random_codes(rng, (m, k), mode, "a"), random_codes(rng, (k, n), mode, "w")


async def check_problems(dut, problems):
    """Run (mode, A, W) problems back to back in one stream of passes; compare with golden."""
    all_passes, spans = [], []
    for mode, a, w in problems:
        passes = plan_matmul(a, w, mode, rows=ROWS, cols=COLS, max_rows=MAX_ROWS)
        spans.append((len(all_passes), len(passes)))
        all_passes += passes
    tb = EngineTestbench(dut, STALL, SEED)
    await tb.reset()
    result_count = sum(p.m for p in all_passes if p.emit)
    values, errors = await tb.run(*encode_passes(all_passes, MAX_ROWS), result_count)
    assert not errors.any(), f"{int(errors.sum())} result rows flagged as errors"
    row = 0
    for (mode, a, w), (first, count) in zip(problems, spans):
        passes = all_passes[first:first + count]
        emitted = sum(p.m for p in passes if p.emit)
        got = assemble(passes, values[row:row + emitted], a.shape[0], w.shape[1]).view(np.uint32)
        row += emitted
        expected = golden.matmul(a, w, mode).view(np.uint32)
        bad = np.argwhere(got != expected)
        assert len(bad) == 0, (
            f"{mode.name} {a.shape} x {w.shape}: {len(bad)} mismatches, first at {bad[0].tolist()}: "
            f"got {got[tuple(bad[0])]:#010x} expected {expected[tuple(bad[0])]:#010x}")
    dut._log.info(f"{len(problems)} problems, {len(all_passes)} passes, {result_count} rows: all match")


@cocotb.test()
async def random_problems(dut):
    """Random shapes (M, K, N not multiples of the array), every mode, extreme codes,
    all back to back in one stream of passes; zero mismatches against golden."""
    rng = np.random.default_rng(SEED)
    problems = [(mode, *random_problem(rng, mode))
                for i in range(PROBLEMS) for mode in [modes()[i % len(modes())]]]
    await check_problems(dut, problems)


@cocotb.test(skip=not FP8)
async def cancellation(dut):
    """huge + tiny - huge in several orders: exactly tiny."""
    await check_problems(dut, cancellation_problems())


@cocotb.test()
async def error_status(dut):
    """Invalid modes and integer/FP8 accumulation mixes give error rows, never a hang."""
    rng = np.random.default_rng(SEED + 7)
    a = rng.integers(0, 256, (3, ROWS))
    w = rng.integers(0, 256, (ROWS, COLS))
    good = plan_matmul(a, w, MatmulMode.INT8, rows=ROWS, cols=COLS, max_rows=MAX_ROWS)[0]
    commands, weight_rows, a_rows = [], [], []
    expected_errors = []

    def add(mode_value, accumulate, emit):
        cmd = good.command() | {"mode": mode_value, "accumulate": accumulate, "emit": emit}
        commands.extend(pack(matmul_pass_layout(MAX_ROWS), {k: [v] for k, v in cmd.items()}))
        weight_rows.extend(pack_lanes(good.weight_tile, 8))
        a_rows.extend(pack_lanes(good.a_rows, 8))
        if emit:
            expected_errors.extend([1 if mode_value in bad_modes or accumulate == 2 else 0] * good.m)

    bad_modes = {6, 7} | (set() if FP8 else {2, 3, 4, 5})
    add(MatmulMode.INT8.value, 0, 1)                # fine
    add(6, 0, 1)                                    # invalid mode
    add(7, 0, 1)
    add(MatmulMode.INT8.value, 0, 1)                # fine again: errors do not stick
    if FP8:
        add(MatmulMode.INT8.value, 0, 0)            # integer partial sums ...
        add(MatmulMode.E4M3.value, 1, 1)            # ... accumulated by an FP8 pass
        expected_errors[-good.m:] = [1] * good.m
    tb = EngineTestbench(dut, STALL, SEED)
    await tb.reset()
    values, errors = await tb.run(commands, weight_rows, a_rows, len(expected_errors))
    assert errors.tolist() == expected_errors
    assert not values[errors == 1].any(), "error rows must have values 0"
    ok = golden.matmul(a, w[:, :COLS], MatmulMode.INT8).view(np.uint32)
    assert np.array_equal(values[:good.m].astype(np.uint32), ok)
