"""FP32 -> E4M3 / INT8 / INT16 converter lane: RTL vs the golden model (sim/golden/fp_convert.py)
in Amaranth's simulator, and the golden model vs its float references on the same vectors.

Stimulus per target: every FP32 exponent field (0..255) x shifts (-64, -40, -8, -1, 0, 1, 8, 40,
64 and two random ones per exponent) x fractions 0, all-ones, random, and for the pairs where a
rounding tie is reachable the tie with an even and an odd kept part and the tie plus one ulp;
then boundary values (E4M3 saturation and subnormal limits, INT8 / INT16 limits and x.5 ties)
scaled by 2**-k for each shift, one FP32 ulp either side, both signs; zeros, subnormals,
infinities and NaNs with quiet and signalling payloads.
"""

import numpy as np
import pytest

from rtl.numerics.fp32_converter import (SHIFT_LIMIT, ConvertTarget, FP32Converter, FP32ConverterInput,
                                         FP32ConverterOutput)
from sim.compare import assert_fields_equal
from sim.golden import fp_convert as golden
from sim.payload import pack, unpack
from sim.pysim import output_timing, run_stream

TARGETS = list(ConvertTarget)
GRID_SHIFTS = [-64, -40, -8, -1, 0, 1, 8, 40, 64]
ALL_ONES = 0x7FFFFF
OUTPUTS = ("code", "saturated", "nan", "shift_error")

SPECIALS = np.array([
    0x00000000, 0x80000000,                      # +-0
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00400000, 0x00123456,  # subnormals
    0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF,  # smallest and largest normals
    0x7F800000, 0xFF800000,                      # +-Inf
    0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF,  # quiet NaNs
    0x7F800001, 0xFF800001, 0x7FA00000, 0xFFBFFFFF,  # signalling NaNs
], dtype=np.uint32)

# Values (after scaling) at the rounding and saturation boundaries of each target.
E4M3_BOUNDARY = [448.0, 464.0, 480.0, 416.0, 432.0, 240.0, 248.0, 256.0,   # saturation, top binade
                 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 3 * 2.0 ** -11, 2.0 ** -11,  # subnormal limit
                 7 * 2.0 ** -9, 15 * 2.0 ** -10, 2.0 ** -6, 1.0, 1.0625, 1.1875]
INT_BOUNDARY = [0.5, 1.5, 2.5, 3.5, 126.5, 127.0, 127.5, 128.0, 128.5, 129.5, 255.5,
                32766.5, 32767.0, 32767.5, 32768.0, 32768.5, 65535.5, 65536.0, 0.25, 0.75]


def _fp32(bits):
    with np.errstate(invalid="ignore"):  # signalling NaN payloads
        return np.asarray(bits, dtype=np.uint32).view(np.float32).astype(np.float64)


def _round_position(exp_field, k, target):
    """Bit index of the round bit in the 24-bit significand; outside 0..23 no tie is possible."""
    if target == ConvertTarget.E4M3:
        unbiased = exp_field + k - 127
        p = 19 + np.maximum(-6 - unbiased, 0)
        ok = (exp_field >= 1) & (exp_field <= 254) & (exp_field + k >= 1) & (exp_field + k <= 254)
    else:
        p = 150 - np.maximum(exp_field, 1) - k - 1
        ok = (exp_field >= 1) & (exp_field <= 254)
    return np.where(ok, p, -1)


def _ties(p, parity, upper):
    """Fractions that put the value exactly halfway (round bit at p, nothing below), with the
    lowest kept bit ``parity`` where the fraction holds it, random bits above that."""
    p = np.asarray(p, dtype=np.int64)
    low = np.clip(p, 0, 22)
    frac = (upper & ~((np.int64(1) << (low + 2)) - 1) & ALL_ONES) | (np.int64(1) << low)
    frac = np.where(p + 1 <= 22, frac | (parity << np.minimum(p + 1, 22)), frac)
    return np.where(p == 23, 0, frac & ALL_ONES)


def grid_vectors(target, rng):
    """(bits, shift) for every exponent field x shift x fraction kind (see the module docstring)."""
    exps, shifts = [], []
    for e in range(256):
        for k in GRID_SHIFTS + list(rng.integers(-SHIFT_LIMIT, SHIFT_LIMIT + 1, 2)):
            exps.append(e)
            shifts.append(k)
    exps, shifts = np.array(exps, dtype=np.int64), np.array(shifts, dtype=np.int64)
    n = len(exps)
    fractions = [np.zeros(n, dtype=np.int64), np.full(n, ALL_ONES), rng.integers(0, 1 << 23, n)]
    kinds = [np.ones(n, dtype=bool)] * 3
    p = _round_position(exps, shifts, target)
    tie_ok = (p >= 0) & (p <= 23)
    for parity in (0, 1):
        fractions.append(_ties(p, parity, rng.integers(0, 1 << 23, n)))
        kinds.append(tie_ok)
    fractions.append(np.minimum(fractions[-1] + 1, ALL_ONES))     # just above the tie
    kinds.append(tie_ok & (p > 0))
    e_all = np.concatenate([exps[m] for m in kinds])
    k_all = np.concatenate([shifts[m] for m in kinds])
    f_all = np.concatenate([f[m] for f, m in zip(fractions, kinds)])
    sign = rng.integers(0, 2, len(e_all))
    bits = (sign << 31) | (e_all << 23) | f_all
    return bits.astype(np.uint32), k_all


def edge_vectors(target, rng):
    """(bits, shift): the target's boundary values at each grid shift (exact inputs scaled by
    2**-k, one ulp either side, both signs), plus the special values at every grid shift."""
    values = np.array(E4M3_BOUNDARY if target == ConvertTarget.E4M3 else INT_BOUNDARY)
    bits, shifts = [], []
    for k in GRID_SHIFTS + [-20, -3, 5, 17]:
        x = np.ldexp(values, -k).astype(np.float32)
        x = x[np.isfinite(x) & (x != 0)]
        x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(0))])
        x = np.concatenate([x, -x])
        b = np.concatenate([x.view(np.uint32), SPECIALS])
        bits.append(b)
        shifts.append(np.full(len(b), k))
    return np.concatenate(bits), np.concatenate(shifts)


def all_vectors(target, seed):
    rng = np.random.default_rng(seed)
    gb, gk = grid_vectors(target, rng)
    eb, ek = edge_vectors(target, rng)
    return np.concatenate([gb, eb]), np.concatenate([gk, ek])


def e4m3_saturated_reference(bits, shift):
    """|x * 2**k| > 464 (rounds past 448) or +-Inf, from the exact float64 value; 0 for NaN."""
    v = np.ldexp(_fp32(bits), np.asarray(shift, dtype=np.int64))
    with np.errstate(invalid="ignore"):
        return (np.abs(v) > 464.0).astype(np.int64)


def expected(bits, shift, target):
    """The lane's output fields by the golden model (shift clamped to +-64, as the RTL does)."""
    bits = np.asarray(bits, dtype=np.uint32)
    shift = np.asarray(shift, dtype=np.int64)
    target = np.broadcast_to(np.asarray(target, dtype=np.int64), bits.shape)
    k = np.clip(shift, -SHIFT_LIMIT, SHIFT_LIMIT)
    e4m3 = golden.fp32_to_e4m3(bits, k).astype(np.int64)
    i8, i16 = golden.fp32_to_int(bits, k, 8), golden.fp32_to_int(bits, k, 16)
    is_e4m3, is_int16 = target == ConvertTarget.E4M3.value, target == ConvertTarget.INT16.value
    code = np.where(is_e4m3, e4m3, np.where(is_int16, i16["value"], i8["value"]) & 0xFFFF)
    saturated = np.where(is_e4m3, e4m3_saturated_reference(bits, k),
                         np.where(is_int16, i16["saturated"], i8["saturated"]))
    return {"code": code, "saturated": saturated, "nan": i8["nan"],
            "shift_error": (np.abs(shift) > SHIFT_LIMIT).astype(np.int64)}


def run_rtl(bits, shift, target, **kwargs):
    target = np.broadcast_to(np.asarray(target, dtype=np.int64), np.shape(bits))
    inputs = dict(value=np.asarray(bits, dtype=np.int64), shift=shift, target=target)
    out = run_stream(FP32Converter(), pack(FP32ConverterInput, inputs), **kwargs)
    return unpack(FP32ConverterOutput, out), inputs


def check_rtl(bits, shift, target, **kwargs):
    got, inputs = run_rtl(bits, shift, target, **kwargs)
    assert_fields_equal(got, expected(bits, shift, target), inputs=inputs)


# -- golden model vs its float references, on the same vectors ---------------------------------

@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_golden_matches_float_references(target):
    bits, shift = all_vectors(target, seed=10 + target.value)
    if target == ConvertTarget.E4M3:
        got = golden.fp32_to_e4m3(bits, shift)
        ref = golden.reference_fp32_to_e4m3(bits, shift)
        nan = (got & 0x7F) == 0x7F
        assert np.array_equal(nan, (ref & 0x7F) == 0x7F)
        bad = np.flatnonzero((got != ref) & ~nan)
        assert len(bad) == 0, [(hex(b), k) for b, k in zip(bits[bad[:8]], shift[bad[:8]])]
        # the saturation flag's reference agrees with the codes: saturated -> +-448
        sat = e4m3_saturated_reference(bits, shift).astype(bool)
        assert np.all((got[sat] & 0x7F) == 0x7E)
    else:
        out_bits = 8 if target == ConvertTarget.INT8 else 16
        got = golden.fp32_to_int(bits, shift, out_bits)
        ref = golden.reference_fp32_to_int(bits, shift, out_bits)
        bad = np.flatnonzero(got["value"] != ref)
        assert len(bad) == 0, [(hex(b), k) for b, k in zip(bits[bad[:8]], shift[bad[:8]])]
        v = np.ldexp(_fp32(bits), shift)
        with np.errstate(invalid="ignore"):
            rounded = np.rint(v)
            outside = (rounded > (1 << (out_bits - 1)) - 1) | (rounded < -(1 << (out_bits - 1)))
        assert np.array_equal(got["saturated"], outside.astype(np.int64))
        assert np.array_equal(got["nan"], np.isnan(v).astype(np.int64))


def test_vectors_cover_the_grid():
    for target in TARGETS:
        bits, shift = all_vectors(target, seed=10 + target.value)
        exps = (bits >> 23) & 0xFF
        for k in GRID_SHIFTS:
            assert set(exps[shift == k].tolist()) == set(range(256))
        p = _round_position(exps.astype(np.int64), shift, target)
        frac = bits.astype(np.int64) & ALL_ONES
        sig = np.where(exps == 0, frac, frac | (1 << 23))
        pc = np.clip(p, 0, 23)
        tie = (p >= 0) & (p <= 23) & (((sig >> pc) & 1) == 1) & ((sig & ((np.int64(1) << pc) - 1)) == 0)
        kept_odd = ((sig >> (pc + 1)) & 1) == 1
        assert (tie & kept_odd).sum() > 100 and (tie & ~kept_odd).sum() > 100, target
        assert len(bits) > 5000


# -- RTL vs golden in Amaranth's simulator -----------------------------------------------------

@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_rtl_matches_golden_pysim(target):
    bits, shift = all_vectors(target, seed=10 + target.value)
    check_rtl(bits, shift, target.value)


def test_rtl_mixed_targets_with_backpressure_pysim():
    """Targets interleaved, random input stalls and output backpressure: every value arrives,
    in order, none duplicated (run_stream also checks that a held output does not change)."""
    rng = np.random.default_rng(3)
    parts = [all_vectors(t, seed=20 + t.value) for t in TARGETS]
    bits = np.concatenate([b for b, _ in parts])
    shift = np.concatenate([k for _, k in parts])
    target = np.concatenate([np.full(len(b), t.value) for t, (b, _) in zip(TARGETS, parts)])
    pick = rng.choice(len(bits), 3000, replace=False)
    shift = shift[pick].copy()
    bad = rng.random(len(pick)) < 0.05
    shift[bad] = rng.choice([-128, -65, 65, 127], bad.sum())
    check_rtl(bits[pick], shift, target[pick], stall=0.3, backpressure=0.5, seed=4)


def test_rtl_out_of_range_shift_saturates_and_flags_pysim():
    rng = np.random.default_rng(5)
    spread = rng.standard_normal(200) * 2.0 ** rng.integers(-80, 80, 200)
    bits = np.concatenate([SPECIALS, golden.fp32_bits(spread),
                           golden.fp32_bits([1.0, -1.0, 2.0 ** -70, 3.0 * 2.0 ** 66])])
    bad_shifts = [-128, -127, -100, -65, 65, 66, 100, 127]
    b = np.tile(bits, len(bad_shifts) + 2)
    k = np.repeat(bad_shifts + [-64, 64], len(bits))
    t = rng.integers(0, 3, len(b))
    got, _ = run_rtl(b, k, t)
    assert np.array_equal(got["shift_error"], (np.abs(k) > 64).astype(np.int64))
    check_rtl(b, k, t)
    # the clamped result: 2**-70 * 2**100 would be 2**30, but is converted as 2**-6
    one = golden.fp32_bits([2.0 ** -70])
    got, _ = run_rtl(one, [100], ConvertTarget.E4M3.value)
    assert got["code"].tolist() == [0x08] and got["shift_error"].tolist() == [1]


@pytest.mark.parametrize("value,shift,target,code,saturated", [
    (1.5, 0, ConvertTarget.INT8, 2, 0),
    (2.5, 0, ConvertTarget.INT8, 2, 0),          # tie to even
    (-2.5, 0, ConvertTarget.INT8, 0xFFFE, 0),
    (-0.5, 0, ConvertTarget.INT8, 0, 0),
    (127.5, 0, ConvertTarget.INT8, 127, 1),
    (-128.5, 0, ConvertTarget.INT8, 0xFF80, 0),  # ties to -128: in range
    (-129.0, 0, ConvertTarget.INT8, 0xFF80, 1),
    (1.25, 2, ConvertTarget.INT16, 5, 0),
    (32767.5, 0, ConvertTarget.INT16, 0x7FFF, 1),
    (-32768.5, 0, ConvertTarget.INT16, 0x8000, 0),
    (1.0, 15, ConvertTarget.INT16, 0x7FFF, 1),
    (-1.0, 15, ConvertTarget.INT16, 0x8000, 0),
    (np.inf, 0, ConvertTarget.INT16, 0x7FFF, 1),
    (3.0, 7, ConvertTarget.E4M3, 0x7C, 0),       # 384
    (448.0, 0, ConvertTarget.E4M3, 0x7E, 0),
    (464.0, 0, ConvertTarget.E4M3, 0x7E, 0),     # tie 448 / 480: to even, 448
    (464.0001, 0, ConvertTarget.E4M3, 0x7E, 1),
    (-1e30, -64, ConvertTarget.E4M3, 0xFE, 1),
    (2.0 ** -10, 0, ConvertTarget.E4M3, 0x00, 0),  # half the smallest subnormal: to zero
    (3 * 2.0 ** -10, 0, ConvertTarget.E4M3, 0x02, 0),
    (-(2.0 ** -60), 64, ConvertTarget.E4M3, 0xD8, 0),  # -16
])
def test_rtl_hand_computed_pysim(value, shift, target, code, saturated):
    got, _ = run_rtl(golden.fp32_bits([value]), [shift], target.value)
    assert got["code"].tolist() == [code] and got["saturated"].tolist() == [saturated]


def test_rtl_nan_pysim():
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001], dtype=np.uint32)
    for target, code in [(ConvertTarget.E4M3, [0x7F, 0xFF, 0x7F, 0xFF]), (ConvertTarget.INT8, [0] * 4),
                         (ConvertTarget.INT16, [0] * 4)]:
        got, _ = run_rtl(bits, np.zeros(4, dtype=np.int64), target.value)
        assert got["code"].tolist() == code
        assert got["nan"].tolist() == [1] * 4 and got["saturated"].tolist() == [0] * 4


def test_latency_and_throughput_pysim():
    dut = FP32Converter()
    payloads = pack(FP32ConverterInput, dict(value=golden.fp32_bits(np.arange(16) * 3.0).astype(np.int64),
                                             shift=0, target=np.arange(16) % 3))
    seen = output_timing(dut, payloads)
    assert dut.latency == 2
    assert [c for c, _ in seen] == [dut.latency + n for n in range(16)]
