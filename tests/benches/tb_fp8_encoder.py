"""cocotb tests of the FP8 encoder against its golden model (run by test_fp8_codec.py)."""

import cocotb
import numpy as np

from rtl.numerics.fp8_encoder import FP8EncoderInput
from rtl.numerics.fp8_format import FP8Format
from sim.cocotb_stream import StreamTestbench
from sim.compare import assert_fields_equal
from sim.golden import fp8_codec as golden
from sim.golden.fp8_edge_values import encoder_edge_values
from sim.payload import pack


async def check(dut, bits, fmts, sat, *, stall, backpressure, seed):
    tb = StreamTestbench(dut, stall=stall, backpressure=backpressure, seed=seed)
    await tb.reset()
    inputs = dict(value=bits, fp8_format=fmts, saturate=sat)
    out = await tb.transfer(pack(FP8EncoderInput, inputs))
    assert_fields_equal({"code": np.array(out)}, {"code": golden.encode(bits, fmts, sat)},
                        inputs=inputs, what="FP8 codes")


@cocotb.test()
async def edge_values_every_mode(dut):
    """Every rounding boundary of both formats, in both overflow modes (no stalls)."""
    bits, fmts, sat = [], [], []
    for fmt in FP8Format:
        edge = encoder_edge_values(fmt)
        for saturate in (0, 1):
            bits.append(edge)
            fmts.append(np.full(len(edge), fmt.value))
            sat.append(np.full(len(edge), saturate))
    await check(dut, np.concatenate(bits), np.concatenate(fmts), np.concatenate(sat),
                stall=0, backpressure=0, seed=0)


@cocotb.test()
async def random_values_with_stalls(dut):
    rng = np.random.default_rng(21)
    n = 20000
    bits = np.concatenate([rng.integers(0, 1 << 32, n // 2, dtype=np.uint64).astype(np.uint32),
                           (rng.standard_normal(n // 2) * 10.0 ** rng.uniform(-9, 6, n // 2))
                           .astype(np.float32).view(np.uint32)])
    await check(dut, bits, rng.integers(0, 2, n), rng.integers(0, 2, n),
                stall=0.25, backpressure=0.25, seed=3)
