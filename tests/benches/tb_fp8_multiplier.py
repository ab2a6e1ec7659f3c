"""cocotb tests of the FP8 multiplier against its golden model (run by test_fp8_multiplier.py)."""

import os

import cocotb
import numpy as np

from rtl.numerics.fp8_format import FP8Format, FP8Product
from rtl.numerics.fp8_multiplier import FP8Operands
from sim.cocotb_stream import StreamTestbench
from sim.compare import assert_fields_equal
from sim.golden import fp8_multiplier as golden
from sim.payload import pack, unpack


async def check(dut, a, b, a_format, b_format, *, stall, backpressure, seed):
    tb = StreamTestbench(dut, stall=stall, backpressure=backpressure, seed=seed)
    await tb.reset()
    inputs = dict(a=a, b=b, a_format=a_format, b_format=b_format)
    outputs = await tb.transfer(pack(FP8Operands, inputs))
    assert_fields_equal(unpack(FP8Product, outputs), golden.multiply(a, b, a_format, b_format),
                        inputs=inputs, what="FP8 products")


@cocotb.test()
async def exhaustive(dut):
    """Every one of the 65,536 code pairs, in the format pair(s) named by FP8_FORMATS."""
    pairs = os.environ.get("FP8_FORMATS", "E4M3xE4M3,E5M2xE5M2,E4M3xE5M2,E5M2xE4M3")
    a, b = (x.ravel() for x in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    fa_all, fb_all, a_all, b_all = [], [], [], []
    for pair in pairs.split(","):
        fa, fb = (FP8Format[name] for name in pair.split("x"))
        fa_all.append(np.full(a.size, fa.value))
        fb_all.append(np.full(a.size, fb.value))
        a_all.append(a)
        b_all.append(b)
    await check(dut, np.concatenate(a_all), np.concatenate(b_all),
                np.concatenate(fa_all), np.concatenate(fb_all), stall=0, backpressure=0, seed=0)


@cocotb.test()
async def random_stalls(dut):
    """Random codes and formats under random input stalls and output backpressure."""
    seed = int(os.environ.get("SEED", "1"))
    rng = np.random.default_rng(seed)
    n = 5000
    await check(dut, rng.integers(0, 256, n), rng.integers(0, 256, n),
                rng.integers(0, 2, n), rng.integers(0, 2, n),
                stall=0.3, backpressure=0.4, seed=seed)
