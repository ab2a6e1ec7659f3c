"""cocotb tests of the INT8 requantizer against its golden model (run by test_requantizer.py).

The stimulus comes from ``tests/test_requantizer.py`` (:func:`edge_cases`,
:func:`random_cases`), so the Amaranth and Verilator runs see the same kinds of case.
"""

import os

import cocotb
import numpy as np

from rtl.numerics.requantizer import RequantizerInput, RequantizerOutput
from sim.cocotb_stream import StreamTestbench
from sim.compare import assert_fields_equal
from sim.golden import requantizer as golden
from sim.payload import pack, unpack
from tests.test_requantizer import FIELDS, edge_cases, random_cases, subsample


async def check(dut, cases, *, stall, backpressure, seed, what):
    tb = StreamTestbench(dut, stall=stall, backpressure=backpressure, seed=seed)
    await tb.reset()
    outputs = await tb.transfer(pack(RequantizerInput, cases))
    expected = golden.requantize(*(cases[name] for name in FIELDS))
    assert_fields_equal(unpack(RequantizerOutput, outputs), expected, inputs=cases, what=what)
    dut._log.info("%s: %d cases, no mismatch", what, len(outputs))


@cocotb.test()
async def edge_and_random(dut):
    """Every edge case, then COUNT random cases, back to back (no stalls)."""
    seed = int(os.environ.get("SEED", "1"))
    count = int(os.environ.get("COUNT", "100000"))
    edges = edge_cases()
    randoms = random_cases(np.random.default_rng(seed), count)
    cases = {name: np.concatenate([edges[name], randoms[name]]) for name in FIELDS}
    await check(dut, cases, stall=0, backpressure=0, seed=seed, what="edge and random cases")


@cocotb.test()
async def random_stalls(dut):
    """Edge and random cases under random input stalls and output backpressure."""
    seed = int(os.environ.get("SEED", "1"))
    rng = np.random.default_rng(seed)
    edges = subsample(edge_cases(), 2500, rng)
    randoms = random_cases(rng, 2500)
    cases = {name: np.concatenate([edges[name], randoms[name]]) for name in FIELDS}
    await check(dut, cases, stall=0.3, backpressure=0.4, seed=seed, what="cases under stalls")
