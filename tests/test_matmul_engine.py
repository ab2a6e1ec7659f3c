"""Matmul engine: PE and array logic in Amaranth's simulator; the engine on Verilator."""

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from jalapeno.matmul_tiling import assemble, plan_matmul
from rtl.matmul.engine import MatmulEngine
from rtl.matmul.mode import MatmulMode
from sim.cocotb_runner import run_cocotb
from sim.payload import unpack_lanes
from sim.golden import matmul as golden
from sim.matmul_cases import encode_passes, random_codes
from sim.toolchain import ice40_cell_model


SMALL = dict(rows=4, cols=4, max_rows=32)


#: Verilator keeps the shared PE module out of line: several times faster to build.
ENGINE_BUILD = dict(verilator_args=("--inline-mult", "1"))


def engine(**params):
    """The engine as the cocotb tests build it: one shared PE module in the Verilog."""
    return MatmulEngine(**params, shared_pe_module=True)


def engine_env(rows, cols, max_rows, fp8=True, **extra):
    env = {"ROWS": rows, "COLS": cols, "MAX_ROWS": max_rows, "FP8": int(fp8)}
    env.update({k.upper(): v for k, v in extra.items()})
    return env


@pytest.mark.cocotb
@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_engine_random_problems_verilator(stall):
    run_cocotb(engine(**SMALL), **ENGINE_BUILD, name="matmul_engine_4x4",
               test_module="tests.benches.tb_matmul_engine", testcase="random_problems",
               extra_env=engine_env(**SMALL, seed=11 + int(stall * 10), stall=stall, problems=18))


@pytest.mark.cocotb
def test_engine_cancellation_and_errors_verilator():
    run_cocotb(engine(**SMALL), **ENGINE_BUILD, name="matmul_engine_4x4",
               test_module="tests.benches.tb_matmul_engine", testcase=["cancellation", "error_status"],
               extra_env=engine_env(**SMALL, seed=5, stall=0.2))


@pytest.mark.cocotb
def test_engine_non_square_chunked_verilator():
    """3 x 5 array, 8 accumulator rows: rows and columns cannot be confused, M is chunked.
    Built like the ULX3S core's engine: its PEs have registered multipliers (in their
    Amaranth implementation), one cycle more through the array, the accumulator's add has a
    stage of its own and the array's broadcasts start at registers (the result rows through
    the output buffer), one cycle more each; the same results as the golden model in every
    mode (the FP8 side information waits for the product in registers of its own). The
    other engine tests cover the PE with one product register, the one-stage accumulator
    and the unbuffered output."""
    params = dict(rows=3, cols=5, max_rows=8)
    dut = engine(**params, pe_multiplier="behavioral", accumulator_stage=True,
                 broadcast_stage=True)
    assert dut.latency == 3 + 5 + 5 + 1 + 1 + 1
    run_cocotb(dut, **ENGINE_BUILD, name="matmul_engine_3x5_registered_multiplier",
               test_module="tests.benches.tb_matmul_engine", testcase="random_problems",
               extra_env=engine_env(**params, seed=23, stall=0.25, problems=12))


@pytest.mark.cocotb
def test_engine_pe_pairs_verilator():
    """PE pairs on dual 8 x 8 multipliers (the iCEBreaker's array) on Yosys' own simulation
    model of the iCE40 DSP: the same results as the golden model, so the engine's latency
    bookkeeping and the primitive's configuration (8 x 8 mode, signedness, registers,
    addend) are what is tested (the Amaranth implementation: tests/test_matmul_array.py).
    6 x 4 with 8 accumulator rows chunks M and keeps rows and columns apart. It is also the
    integer-only engine's test (fp8=False: the integer modes work, the FP8 modes are errors,
    checked by error_status); integer-only engines of plain PEs run in the GEMM-only core
    (tests/test_core.py) and the array tests."""
    params = dict(rows=6, cols=4, max_rows=8)
    run_cocotb(engine(**params, fp8=False, pe_pairs="sb_mac16"), **ENGINE_BUILD,
               name="matmul_engine_pairs_sb_mac16_6x4",
               extra_verilog=ice40_cell_model("SB_MAC16"),
               test_module="tests.benches.tb_matmul_engine",
               testcase=["random_problems", "error_status"],
               extra_env=engine_env(**params, fp8=False, seed=37, stall=0.3, problems=14))


def run_engine_pysim(dut, problems, *, backpressure, seed):
    """Run (mode, A, W) problems back to back through ``dut`` in Amaranth's simulator,
    inputs always valid, random backpressure on ``c``. Returns the results of each
    problem and, for every A row fed, the engine's advancing cycle (``c`` not held) in
    which it went in, its accumulator row and whether its pass accumulates."""
    all_passes, spans = [], []
    for mode, a, w in problems:
        passes = plan_matmul(a, w, mode, rows=dut.rows, cols=dut.cols, max_rows=dut.max_rows)
        spans.append((len(all_passes), len(passes)))
        all_passes += passes
    commands, weights, a_rows = (list(s) for s in encode_passes(all_passes, dut.max_rows))
    row_info = [(i, p.accumulate) for p in all_passes for i in range(p.m)]
    expected_rows = sum(p.m for p in all_passes if p.emit)
    rng = np.random.default_rng(seed)
    results, fed = [], []

    async def bench(ctx):
        advancing = 0
        queues = [(dut.cmd, commands), (dut.weights, weights), (dut.a, a_rows)]
        for _ in range(20 * (len(weights) + len(a_rows)) + 200):
            if len(results) == expected_rows:
                break
            for port, queue in queues:
                ctx.set(port.valid, bool(queue))
                if queue:
                    ctx.set(Value.cast(port.payload), int(queue[0]))
            ctx.set(dut.c.ready, bool(rng.random() >= backpressure))
            c_valid, c_ready = ctx.get(dut.c.valid), ctx.get(dut.c.ready)
            if c_valid and c_ready:
                results.append(ctx.get(Value.cast(dut.c.payload)))
            for port, queue in queues:
                if queue and ctx.get(port.ready):
                    queue.pop(0)
                    if port is dut.a:
                        fed.append((advancing, *row_info[len(fed)]))
            advancing += (not c_valid) or c_ready
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(results) == expected_rows, f"{len(results)} of {expected_rows} result rows came out"
    layout = dut.c.payload.shape()
    values = unpack_lanes(results, 32, dut.cols).astype(np.uint32)
    assert not any(r >> layout["error"].offset & 1 for r in results), "error rows"
    got, row = [], 0
    for (mode, a, w), (first, count) in zip(problems, spans):
        passes = all_passes[first:first + count]
        emitted = sum(p.m for p in passes if p.emit)
        got.append(assemble(passes, values[row:row + emitted], a.shape[0], w.shape[1]))
        row += emitted
    return got, fed


def random_integer_problems(rng, count, m_range, k_range, n_range):
    """``count`` (mode, A, W) problems, INT8 and UINT8 in turn, with M, K and N drawn from
    the half-open ranges."""
    problems = []
    for i in range(count):
        m, k, n = (int(rng.integers(*r)) for r in (m_range, k_range, n_range))
        mode = (MatmulMode.INT8, MatmulMode.UINT8)[i % 2]
        problems.append((mode, random_codes(rng, (m, k), mode, "a"),
                         random_codes(rng, (k, n), mode, "w")))
    return problems


def test_engine_accumulator_stage_forwards_back_to_back_rows():
    """With ``accumulator_stage`` a row is added and written a cycle after it is read: an
    accumulating row one advancing cycle behind a row of the same accumulator row needs
    the forwarded sum, one two cycles behind the transparent read. Short K-tiled problems
    with M = 1 or 2 and heavy backpressure (weights load while ``c`` is held, so the next
    pass follows at once) make both happen, many times; the results must match golden."""
    problems = random_integer_problems(np.random.default_rng(3), 40, (1, 3), (3, 9), (1, 3))
    dut = MatmulEngine(rows=2, cols=2, max_rows=4, fp8=False, accumulator_stage=True)
    assert dut.latency == 2 + 2 + 5 + 1
    got, fed = run_engine_pysim(dut, problems, backpressure=0.7, seed=4)
    for (mode, a, w), result in zip(problems, got):
        assert np.array_equal(result, golden.matmul(a, w, mode)), (mode, a, w, result)
    gaps = [later[0] - earlier[0] for j, later in enumerate(fed) if later[2]
            for earlier in [next((e for e in reversed(fed[:j]) if e[1] == later[1]), None)]
            if earlier is not None]
    assert gaps.count(1) >= 5 and gaps.count(2) >= 5, sorted(gaps)[:20]


def measure_engine_timing(dut, m):
    """One INT8 pass of ``m`` rows (K = rows, every column), inputs always valid and ``c``
    always ready, in Amaranth's simulator: the cycles from the first A row's transfer to
    the first result row, and the cycles in which result rows came out."""
    rng = np.random.default_rng(m)
    a = random_codes(rng, (m, dut.rows), MatmulMode.INT8, "a")
    w = random_codes(rng, (dut.rows, dut.cols), MatmulMode.INT8, "w")
    passes = plan_matmul(a, w, MatmulMode.INT8, rows=dut.rows, cols=dut.cols,
                         max_rows=dut.max_rows)
    commands, weights, a_rows = (list(s) for s in encode_passes(passes, dut.max_rows))
    first_in, out_cycles, results = None, [], []

    async def bench(ctx):
        nonlocal first_in
        queues = [(dut.cmd, commands), (dut.weights, weights), (dut.a, a_rows)]
        ctx.set(dut.c.ready, 1)
        for cycle in range(4 * (m + dut.latency) + 40):
            for port, queue in queues:
                ctx.set(port.valid, bool(queue))
                if queue:
                    ctx.set(Value.cast(port.payload), int(queue[0]))
            if ctx.get(dut.c.valid):
                out_cycles.append(cycle)
                results.append(ctx.get(Value.cast(dut.c.payload)))
            for port, queue in queues:
                if queue and ctx.get(port.ready):
                    queue.pop(0)
                    if port is dut.a and first_in is None:
                        first_in = cycle
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    values = unpack_lanes(results, 32, dut.cols).astype(np.uint32)
    got = assemble(passes, values, m, dut.cols)
    assert np.array_equal(got, golden.matmul(a, w, MatmulMode.INT8))
    return out_cycles[0] - first_in, out_cycles


@pytest.mark.parametrize("options", [{}, dict(accumulator_stage=True),
                                     dict(broadcast_stage=True),
                                     dict(accumulator_stage=True, broadcast_stage=True)])
def test_engine_latency_and_throughput(options):
    """The stated latency is the measured one, and with ``c`` always ready the result rows
    of a pass come out one per cycle (the output buffer of ``broadcast_stage`` never stops
    the datapath then)."""
    dut = MatmulEngine(rows=3, cols=2, max_rows=32, fp8=False, **options)
    latency, out_cycles = measure_engine_timing(dut, 24)
    assert latency == dut.latency == 3 + 2 + 5 + sum(options.values())
    assert out_cycles == list(range(out_cycles[0], out_cycles[0] + 24))


@pytest.mark.parametrize("backpressure", [0.3, 0.7])
def test_engine_broadcast_stage_under_backpressure(backpressure):
    """With ``broadcast_stage`` the datapath advances on a register and the result rows
    wait in a two-row buffer: random backpressure on ``c`` (70 %: the buffer fills and
    the datapath stops; 30 %: it rarely does) loses, repeats or reorders no row, with
    weights loading while ``c`` is held (the weight rows are written a cycle late)."""
    problems = random_integer_problems(np.random.default_rng(int(backpressure * 10)), 24,
                                       (1, 9), (1, 9), (1, 5))
    dut = MatmulEngine(rows=3, cols=2, max_rows=4, fp8=False, accumulator_stage=True,
                       broadcast_stage=True)
    got, _ = run_engine_pysim(dut, problems, backpressure=backpressure, seed=7)
    for (mode, a, w), result in zip(problems, got):
        assert np.array_equal(result, golden.matmul(a, w, mode)), (mode, a, w, result)


def test_engine_pe_options_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        MatmulEngine(rows=4, cols=4, fp8=False, pe_pairs="behavioral", pe_multiplier="behavioral")
    with pytest.raises(ValueError, match="Registered multiplier implementation must be one of"):
        MatmulEngine(rows=4, cols=4, pe_multiplier="dsp48")


def test_engine_pe_pairs_need_an_integer_array_with_even_columns():
    with pytest.raises(ValueError, match="integer-only"):
        MatmulEngine(rows=4, cols=4, pe_pairs="behavioral")
    with pytest.raises(ValueError, match="even column count, not 3"):
        MatmulEngine(rows=4, cols=3, fp8=False, pe_pairs="behavioral")
    with pytest.raises(ValueError, match="implementation must be one of"):
        MatmulEngine(rows=4, cols=4, fp8=False, pe_pairs="dsp48")


# -- host tiling ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(MatmulMode))
@pytest.mark.parametrize("shape", [(0, 3, 2), (5, 0, 3), (1, 1, 1), (9, 4, 11), (20, 3, 4), (9, 10, 11)])
def test_tiling_round_trip_with_a_software_engine(mode, shape):
    """Plan, run each pass through a software engine, assemble: equals golden.

    The software engine is the golden model applied to each padded tile. Integer
    passes accumulate in int64 like the hardware; FP8 results cannot be added
    after rounding, so FP8 shapes with more than one K tile only check the pass
    structure. This checks the tiler alone: padding, pass order, flags, assembly.
    """
    m, k, n = shape
    rng = np.random.default_rng(sum(shape) + mode.value)
    a = random_codes(rng, (m, k), mode, "a")
    w = random_codes(rng, (k, n), mode, "w")
    passes = plan_matmul(a, w, mode, rows=4, cols=4, max_rows=8)
    k_tiles = max(1, -(-k // 4))
    assert len(passes) == -(-m // 8) * -(-n // 4) * k_tiles
    rows_out, acc = [], None
    for p in passes:
        assert p.weight_tile.shape == (4, 4) and p.a_rows.shape[1] == 4 and p.m <= 8
        tile = golden.matmul(p.a_rows, p.weight_tile, mode)
        if not mode.is_fp8:
            acc = tile.astype(np.int64) + (acc if p.accumulate else 0)
            tile = acc.astype(np.int32)
        else:
            assert p.accumulate == (k_tiles > 1 and acc is not None)
            acc = None if p.emit else tile
        if p.emit:
            rows_out.extend(tile.view(np.uint32))
    if not mode.is_fp8 or k_tiles == 1:
        got = assemble(passes, rows_out, m, n)
        assert np.array_equal(got.view(np.uint32), golden.matmul(a, w, mode).view(np.uint32))


def test_tiling_pads_fp8_with_negative_zero():
    a = np.array([[0x80]], dtype=np.uint8)          # -0
    w = np.array([[0x38]], dtype=np.uint8)          # 1.0: product -0
    (p,) = plan_matmul(a, w, MatmulMode.E4M3, rows=4, cols=4, max_rows=8)
    assert p.a_rows.tolist() == [[0x80, 0x80, 0x80, 0x80]]
    assert golden.matmul(p.a_rows, p.weight_tile, MatmulMode.E4M3)[0, 0] == 0x80000000
    (p,) = plan_matmul(np.zeros((1, 0), np.uint8), np.zeros((0, 1), np.uint8), MatmulMode.E4M3,
                       rows=4, cols=4, max_rows=8)
    assert p.a_rows.tolist() == [[0, 0, 0, 0]]      # K = 0: the empty sum is +0


@pytest.mark.parametrize("a,w,message", [
    (np.zeros((2, 3)), np.zeros((4, 2)), "inner sizes differ"),
    (np.zeros((2, 3, 1)), np.zeros((3, 2)), "2-D"),
    (np.full((1, 1), 256), np.zeros((1, 1)), "8-bit codes"),
    (np.zeros((1, 65537)), np.zeros((65537, 1)), "exceeds"),
])
def test_tiling_rejects_bad_input(a, w, message):
    with pytest.raises(ValueError, match=message):
        plan_matmul(a, w, MatmulMode.INT8, rows=4, cols=4, max_rows=8)


def test_assemble_checks_row_count():
    passes = plan_matmul(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), MatmulMode.INT8,
                         rows=4, cols=4, max_rows=8)
    with pytest.raises(ValueError, match="fewer"):
        assemble(passes, [np.zeros(4)], 2, 2)
    with pytest.raises(ValueError, match="more"):
        assemble(passes, [np.zeros(4)] * 3, 2, 2)
