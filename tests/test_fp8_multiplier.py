"""FP8 multiplier: golden model vs float reference, RTL vs golden in Amaranth and on Verilator."""

import numpy as np
import pytest

from rtl.numerics.fp8_format import FP8Format, FP8Product
from rtl.numerics.fp8_multiplier import FP8Multiplier, FP8Operands
from sim.cocotb_runner import run_cocotb
from sim.compare import assert_fields_equal
from sim.golden import fp8_multiplier as golden
from sim.payload import pack, unpack
from sim.pysim import output_timing, run_stream

FORMAT_PAIRS = [(fa, fb) for fa in FP8Format for fb in FP8Format]
ALL_CODES = np.arange(256)


@pytest.mark.parametrize("fa,fb", FORMAT_PAIRS, ids=lambda f: f.name)
def test_golden_matches_float_reference_exhaustively(fa, fb):
    a, b = (x.ravel() for x in np.meshgrid(ALL_CODES, ALL_CODES, indexing="ij"))
    got = golden.product_to_float(golden.multiply(a, b, fa, fb))
    ref = golden.reference_multiply(a, b, fa, fb)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    finite = ~np.isnan(ref)
    assert np.array_equal(got[finite], ref[finite])
    # Signed zeros and infinities keep the sign of an IEEE product.
    assert np.array_equal(np.signbit(got[finite]), np.signbit(ref[finite]))


def test_golden_special_cases():
    e4m3, e5m2 = FP8Format.E4M3, FP8Format.E5M2
    # 448 * 448 = 200704 = 196 * 2**10 exactly
    p = golden.multiply([0x7E], [0x7E], e4m3, e4m3)
    assert (p["significand"][0], p["exponent"][0], p["nan"][0]) == (196, 10, 0)
    # smallest subnormals: 2**-9 * 2**-16 = 2**-25
    p = golden.multiply([0x01], [0x01], e4m3, e5m2)
    assert (p["significand"][0], p["exponent"][0]) == (1, -25)
    # Inf * 0 is NaN, Inf * -2 is -Inf, NaN * 1 is NaN
    assert golden.multiply([0x7C], [0x00], e5m2, e5m2)["nan"][0] == 1
    p = golden.multiply([0x7C], [0xC0], e5m2, e5m2)
    assert (p["inf"][0], p["sign"][0], p["nan"][0]) == (1, 1, 0)
    assert golden.multiply([0x7F], [0x38], e4m3, e4m3)["nan"][0] == 1
    # E4M3 has no infinity: 0x7E is finite, 0x7F is NaN
    assert golden.multiply([0x7E], [0x7E], e4m3, e4m3)["inf"][0] == 0


def test_latency_and_throughput_pysim():
    """One product per cycle with latency 2, checked on an idle-to-full run."""
    dut = FP8Multiplier()
    payloads = pack(FP8Operands, dict(a=np.arange(16), b=np.full(16, 0x38)))
    seen = output_timing(dut, payloads)
    assert [c for c, _ in seen] == list(range(dut.latency, dut.latency + 16))
    # b = 1.0: each product's value is a's value.
    got = golden.product_to_float(unpack(FP8Product, [p for _, p in seen]))
    assert np.array_equal(got, golden.reference_multiply(np.arange(16), 0x38, FP8Format.E4M3, FP8Format.E4M3))


@pytest.mark.parametrize("stall,backpressure", [(0, 0), (0.5, 0.5)])
def test_rtl_matches_golden_pysim(stall, backpressure):
    rng = np.random.default_rng(7)
    n = 1500
    inputs = dict(a=rng.integers(0, 256, n), b=rng.integers(0, 256, n),
                  a_format=rng.integers(0, 2, n), b_format=rng.integers(0, 2, n))
    out = run_stream(FP8Multiplier(), pack(FP8Operands, inputs), stall=stall,
                     backpressure=backpressure, seed=3)
    expected = golden.multiply(inputs["a"], inputs["b"], inputs["a_format"], inputs["b_format"])
    assert_fields_equal(unpack(FP8Product, out), expected, inputs=inputs)


@pytest.mark.cocotb
@pytest.mark.parametrize("formats", ["E4M3xE4M3", "E5M2xE5M2", "E4M3xE5M2,E5M2xE4M3"])
def test_rtl_exhaustive_verilator(formats):
    run_cocotb(FP8Multiplier(), name="fp8_multiplier", test_module="tests.benches.tb_fp8_multiplier",
               testcase="exhaustive", extra_env={"FP8_FORMATS": formats})


@pytest.mark.cocotb
def test_rtl_random_stalls_verilator():
    run_cocotb(FP8Multiplier(), name="fp8_multiplier", test_module="tests.benches.tb_fp8_multiplier",
               testcase="random_stalls", extra_env={"SEED": 11})
