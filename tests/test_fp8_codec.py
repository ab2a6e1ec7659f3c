"""FP8 codec: golden vs ml_dtypes; decoder and encoder RTL vs golden in Amaranth and on Verilator."""

import ml_dtypes
import numpy as np
import pytest

from rtl.numerics.fp8_decoder import FP8Code, FP8Decoder
from rtl.numerics.fp8_encoder import FP8Encoder, FP8EncoderInput
from rtl.numerics.fp8_format import FORMAT_INFO, FP8Format, FP8Value
from sim.cocotb_runner import run_cocotb
from sim.compare import assert_fields_equal
from sim.golden import fp8_codec as golden
from sim.golden.fp8_edge_values import encoder_edge_values
from sim.payload import pack, unpack
from sim.pysim import run_stream

ALL_CODES = np.arange(256)
FORMATS = list(FP8Format)


def random_fp32_bits(rng, n):
    """Half uniformly random bit patterns, half values spread over FP8's whole range."""
    bits = rng.integers(0, 1 << 32, n // 2, dtype=np.uint64).astype(np.uint32)
    spread = (rng.standard_normal(n - n // 2) * 10.0 ** rng.uniform(-9, 6, n - n // 2))
    return np.concatenate([bits, spread.astype(np.float32).view(np.uint32)])


# -- golden model vs the float reference (ml_dtypes) --------------------------------------

@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_golden_decode_exhaustive_vs_ml_dtypes(fmt):
    got = golden.decoded_to_float(golden.decode(ALL_CODES, fmt))
    ref = golden.reference_decode(ALL_CODES, fmt)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    finite = ~np.isnan(ref)
    assert np.array_equal(got[finite], ref[finite])
    assert np.array_equal(np.signbit(got[finite]), np.signbit(ref[finite]))


def test_format_constants():
    e4m3, e5m2 = FORMAT_INFO[FP8Format.E4M3], FORMAT_INFO[FP8Format.E5M2]
    assert golden.reference_decode([e4m3.max_magnitude_code], FP8Format.E4M3)[0] == 448
    assert golden.reference_decode([e5m2.max_magnitude_code], FP8Format.E5M2)[0] == 57344
    assert np.isnan(golden.reference_decode([0x7F], FP8Format.E4M3)[0])
    assert golden.reference_decode([0x7C], FP8Format.E5M2)[0] == np.inf
    # e4m3fn, not e4m3fnuz: bias 7 and 0x80 is negative zero, not NaN
    assert golden.reference_decode([0x38], FP8Format.E4M3)[0] == 1.0
    assert golden.reference_decode([0x80], FP8Format.E4M3)[0] == 0.0
    assert golden.ML_DTYPES[FP8Format.E4M3] is ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("saturate", [False, True], ids=["overflow", "saturate"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_golden_encode_vs_ml_dtypes(fmt, saturate):
    rng = np.random.default_rng(100 + fmt.value + 2 * saturate)
    bits = np.concatenate([encoder_edge_values(fmt), random_fp32_bits(rng, 1_000_000)])
    got = golden.encode(bits, fmt, saturate)
    ref = golden.reference_encode(bits.view(np.float32), fmt, saturate)
    bad = np.flatnonzero(got != ref)
    assert len(bad) == 0, [(hex(b), hex(g), hex(r)) for b, g, r in
                           zip(bits[bad[:5]], got[bad[:5]], ref[bad[:5]])]


@pytest.mark.parametrize("value,fmt,saturate,code", [
    (448.0, FP8Format.E4M3, False, 0x7E),
    (464.0, FP8Format.E4M3, False, 0x7E),       # tie between 448 and (NaN) 480: to even, 448
    (464.1, FP8Format.E4M3, False, 0x7F),       # past the tie: overflow to NaN
    (464.1, FP8Format.E4M3, True, 0x7E),        # saturating: 448
    (-1e9, FP8Format.E4M3, True, 0xFE),
    (np.inf, FP8Format.E4M3, False, 0x7F),
    (np.inf, FP8Format.E5M2, False, 0x7C),
    (-np.inf, FP8Format.E5M2, True, 0xFB),
    (61440.0, FP8Format.E5M2, False, 0x7C),     # tie between 57344 and Inf: to even, Inf
    (2.0 ** -10, FP8Format.E4M3, False, 0x00),  # half the smallest subnormal: tie to zero
    (3 * 2.0 ** -10, FP8Format.E4M3, False, 0x02),  # 1.5 subnormal ulps: tie to even, 2
    (-2.0 ** -17, FP8Format.E5M2, False, 0x80),  # negative tiny: negative zero
    (1.0, FP8Format.E4M3, False, 0x38),
    (1.0625, FP8Format.E4M3, False, 0x38),      # tie between 1 and 1.125: to even, 1
    (1.1875, FP8Format.E4M3, False, 0x3A),      # tie between 1.125 and 1.25: to even, 1.25
])
def test_golden_encode_named_cases(value, fmt, saturate, code):
    bits = np.array([value], dtype=np.float32).view(np.uint32)
    assert golden.encode(bits, fmt, saturate)[0] == code


def test_golden_encode_nan_keeps_sign():
    bits = np.array([0x7FC00000, 0xFFC00000], dtype=np.uint32)
    assert list(golden.encode(bits, FP8Format.E4M3, True)) == [0x7F, 0xFF]
    assert list(golden.encode(bits, FP8Format.E5M2, True)) == [0x7E, 0xFE]


def test_golden_rejects_bad_input():
    with pytest.raises(TypeError):
        golden.encode(np.array([1.0], dtype=np.float32), FP8Format.E4M3, False)
    with pytest.raises(ValueError):
        golden.decode([256], FP8Format.E4M3)
    with pytest.raises(ValueError):
        golden.decode([1], 2)


# -- RTL vs golden in Amaranth's simulator --------------------------------------------------

@pytest.mark.parametrize("stall,backpressure", [(0, 0), (0.4, 0.4)])
def test_decoder_rtl_exhaustive_pysim(stall, backpressure):
    codes = np.tile(ALL_CODES, 2)
    fmts = np.repeat([0, 1], 256)
    out = run_stream(FP8Decoder(), pack(FP8Code, dict(code=codes, fp8_format=fmts)),
                     stall=stall, backpressure=backpressure, seed=5)
    assert_fields_equal(unpack(FP8Value, out), golden.decode(codes, fmts),
                        inputs=dict(code=codes, fp8_format=fmts))


@pytest.mark.parametrize("stall,backpressure", [(0, 0), (0.4, 0.4)])
def test_encoder_rtl_pysim(stall, backpressure):
    rng = np.random.default_rng(9)
    edge = np.concatenate([encoder_edge_values(f) for f in FORMATS])
    bits = np.concatenate([rng.choice(edge, 1500), random_fp32_bits(rng, 500)])
    fmts = rng.integers(0, 2, len(bits))
    sat = rng.integers(0, 2, len(bits))
    out = run_stream(FP8Encoder(), pack(FP8EncoderInput, dict(value=bits, fp8_format=fmts, saturate=sat)),
                     stall=stall, backpressure=backpressure, seed=6)
    assert_fields_equal({"code": np.array(out)}, {"code": golden.encode(bits, fmts, sat)},
                        inputs=dict(value=bits, fp8_format=fmts, saturate=sat))


# -- RTL vs golden on Verilator -------------------------------------------------------------

@pytest.mark.cocotb
def test_decoder_rtl_verilator():
    run_cocotb(FP8Decoder(), name="fp8_decoder", test_module="tests.benches.tb_fp8_decoder")


@pytest.mark.cocotb
def test_encoder_rtl_verilator():
    run_cocotb(FP8Encoder(), name="fp8_encoder", test_module="tests.benches.tb_fp8_encoder")
