"""cocotb tests of the FP8 decoder against its golden model (run by test_fp8_codec.py)."""

import cocotb
import numpy as np

from rtl.numerics.fp8_decoder import FP8Code
from rtl.numerics.fp8_format import FP8Value
from sim.cocotb_stream import StreamTestbench
from sim.compare import assert_fields_equal
from sim.golden import fp8_codec as golden
from sim.payload import pack, unpack


@cocotb.test()
async def exhaustive_with_stalls(dut):
    """All 256 codes in both formats, four times over, under stalls and backpressure."""
    codes = np.tile(np.arange(256), 8)
    fmts = np.tile(np.repeat([0, 1], 256), 4)
    tb = StreamTestbench(dut, stall=0.3, backpressure=0.3, seed=2)
    await tb.reset()
    out = await tb.transfer(pack(FP8Code, dict(code=codes, fp8_format=fmts)))
    assert_fields_equal(unpack(FP8Value, out), golden.decode(codes, fmts),
                        inputs=dict(code=codes, fp8_format=fmts))
