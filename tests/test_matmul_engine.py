"""Matmul engine: PE and array logic in Amaranth's simulator; the engine on Verilator."""

import numpy as np
import pytest

from jalapeno.matmul_tiling import assemble, plan_matmul
from rtl.matmul.engine import MatmulEngine
from rtl.matmul.mode import MatmulMode
from sim.cocotb_runner import run_cocotb
from sim.golden import matmul as golden
from sim.matmul_cases import random_codes
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
    Its PEs have registered multipliers (the ULX3S core's, in their Amaranth
    implementation): one cycle more through the array, the same results as the golden
    model in every mode (the FP8 side information waits for the product in registers of
    its own); the other engine tests cover the PE with one product register."""
    params = dict(rows=3, cols=5, max_rows=8)
    dut = engine(**params, pe_multiplier="behavioral")
    assert dut.latency == 3 + 5 + 5 + 1
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
