"""cocotb tests of the extended requantizer (INT16 output, residual) against the golden models
(run by test_requantizer.py); stimulus from ``tests/test_requantizer.py``."""

import os

import cocotb
import numpy as np

from rtl.numerics.requantizer import ExtendedRequantizerInput, ExtendedRequantizerOutput
from sim.cocotb_stream import StreamTestbench
from sim.compare import assert_fields_equal
from sim.payload import pack, unpack
from tests.test_requantizer import (_ext_concat, ext_edge_cases, ext_golden_fields, ext_random_cases,
                                    subsample)


async def check(dut, cases, *, stall, backpressure, seed, what):
    tb = StreamTestbench(dut, stall=stall, backpressure=backpressure, seed=seed)
    await tb.reset()
    outputs = await tb.transfer(pack(ExtendedRequantizerInput, cases))
    assert_fields_equal(unpack(ExtendedRequantizerOutput, outputs), ext_golden_fields(cases),
                        inputs=cases, what=what)
    dut._log.info("%s: %d cases, no mismatch", what, len(outputs))


@cocotb.test()
async def edge_and_random(dut):
    """Every edge case, then COUNT random cases, back to back (no stalls)."""
    seed = int(os.environ.get("SEED", "1"))
    count = int(os.environ.get("COUNT", "60000"))
    cases = _ext_concat(ext_edge_cases(), ext_random_cases(np.random.default_rng(seed), count))
    await check(dut, cases, stall=0, backpressure=0, seed=seed, what="edge and random cases")


@cocotb.test()
async def random_stalls(dut):
    """Edge and random cases under random input stalls and output backpressure."""
    seed = int(os.environ.get("SEED", "1"))
    rng = np.random.default_rng(seed)
    cases = _ext_concat(subsample(ext_edge_cases(), 2500, rng), ext_random_cases(rng, 2500))
    await check(dut, cases, stall=0.3, backpressure=0.4, seed=seed, what="cases under stalls")
