"""Matmul engine: PE and array logic in Amaranth's simulator; the engine on Verilator."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from jalapeno.matmul_tiling import assemble, plan_matmul
from rtl.matmul.engine import MatmulEngine
from rtl.matmul.mode import MatmulMode
from sim.cocotb_runner import run_cocotb
from sim.golden import matmul as golden
from sim.matmul_cases import random_codes


SMALL = dict(rows=4, cols=4, max_rows=32)


def engine_env(rows, cols, max_rows, fp8=True, **extra):
    env = {"ROWS": rows, "COLS": cols, "MAX_ROWS": max_rows, "FP8": int(fp8)}
    env.update({k.upper(): v for k, v in extra.items()})
    return env


@pytest.mark.cocotb
@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_engine_random_problems_verilator(stall):
    run_cocotb(MatmulEngine(**SMALL), name="matmul_engine_4x4",
               test_module="tests.benches.tb_matmul_engine", testcase="random_problems",
               extra_env=engine_env(**SMALL, seed=11 + int(stall * 10), stall=stall, problems=18))


@pytest.mark.cocotb
def test_engine_cancellation_and_errors_verilator():
    run_cocotb(MatmulEngine(**SMALL), name="matmul_engine_4x4",
               test_module="tests.benches.tb_matmul_engine", testcase=["cancellation", "error_status"],
               extra_env=engine_env(**SMALL, seed=5, stall=0.2))
