"""Golden model of the matmul engine (sim/golden/matmul.py): exactness, rounding, specials."""

import itertools
import time

import numpy as np
import pytest

from rtl.matmul.mode import MAX_EXACT_K, MatmulMode
from rtl.numerics.fp8_format import FP8Format
from sim.golden import fp8_codec
from sim.golden import matmul as golden


FP8_MODES = [m for m in MatmulMode if m.is_fp8]
INT_MODES = [MatmulMode.INT8, MatmulMode.UINT8]
E4M3, E5M2 = FP8Format.E4M3, FP8Format.E5M2

NAN, POS_INF, NEG_INF, NEG_ZERO = (golden.FP32_NAN, golden.FP32_POS_INF, golden.FP32_NEG_INF,
                                   golden.FP32_NEG_ZERO)


def code(value, fmt):
    """The FP8 code of a value that the format represents exactly."""
    c = int(golden.fp8_codes([value], fmt)[0])
    decoded = fp8_codec.reference_decode([c], fmt)[0]
    assert decoded == value or (np.isnan(value) and np.isnan(decoded)), (value, fmt)
    return c


def f32_bits(value):
    """FP32 bits of a value exactly representable in float32."""
    f = np.float32(value)
    assert float(f) == value
    return int(np.array([f]).view(np.uint32)[0])


def dot(mode, a_values, w_values):
    """Golden result (Python int) of one dot product given as exact values."""
    a = np.array([[code(v, mode.activation_format) for v in a_values]], dtype=np.uint8)
    w = np.array([[code(v, mode.weight_format)] for v in w_values], dtype=np.uint8)
    return int(golden.matmul(a, w, mode)[0, 0])


def special_codes(fmt):
    """Codes worth over-sampling: zeros, smallest/largest subnormal, max, NaN, Inf, one."""
    info_nan = [0x7F, 0xFF] if fmt == E4M3 else [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF]
    inf = [] if fmt == E4M3 else [0x7C, 0xFC]
    max_code = 0x7E if fmt == E4M3 else 0x7B
    sub_max = 0x07 if fmt == E4M3 else 0x03
    one = 0x38 if fmt == E4M3 else 0x3C
    finite = [0x00, 0x80, 0x01, 0x81, sub_max, sub_max | 0x80, sub_max + 1,
              max_code, max_code | 0x80, one, one | 0x80]
    return np.array(finite), np.array(info_nan + inf)


def random_codes(rng, shape, fmt, profile):
    """Random codes; profiles mix in special values at elevated probability."""
    uniform = rng.integers(0, 256, size=shape)
    if fmt is None or profile == "uniform":
        if fmt is None and profile != "uniform":
            extremes = np.array([0x00, 0x7F, 0x80, 0xFF, 0x01, 0x81])
            pick = rng.random(shape) < 0.4
            return np.where(pick, rng.choice(extremes, size=shape), uniform)
        return uniform
    finite_specials, nonfinite = special_codes(fmt)
    is_nonfinite = np.isin(uniform, nonfinite)
    finite_uniform = np.where(is_nonfinite, uniform & 0x3F, uniform)  # exponent top bit cleared
    if profile == "finite":
        pick = rng.random(shape) < 0.3
        return np.where(pick, rng.choice(finite_specials, size=shape), finite_uniform)
    if profile == "zeros":
        pick = rng.random(shape) < 0.85
        return np.where(pick, rng.choice([0x00, 0x80], size=shape), finite_uniform)
    if profile == "specials":
        r = rng.random(shape)
        out = np.where(r < 0.3, rng.choice(finite_specials, size=shape), finite_uniform)
        return np.where(r > 0.95, rng.choice(nonfinite, size=shape), out)
    raise AssertionError(profile)


# --------------------------------------------------------------------------- vs exact reference

@pytest.mark.parametrize("mode", list(MatmulMode), ids=lambda m: m.name)
def test_matches_exact_reference_on_random_shapes(mode):
    rng = np.random.default_rng(1000 + mode.value)
    profiles = ["uniform", "finite", "zeros", "specials", "cancel"]
    shapes = [tuple(rng.integers(0, 10, size=3)) for _ in range(100)]
    shapes += [(int(rng.integers(1, 5)), int(rng.integers(10, 41)), int(rng.integers(1, 5)))
               for _ in range(25)]
    shapes += [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0), (2, 0, 2)]
    seen = {"nan": 0, "inf": 0, "neg_zero": 0, "pos_zero": 0, "finite": 0}
    for index, (m, k, n) in enumerate(shapes):
        profile = profiles[index % len(profiles)]
        fa, fw = mode.activation_format, mode.weight_format
        if profile == "cancel":
            # Second half of the sum cancels the first exactly: exact sum 0 with
            # nonzero products (the result must be +0, never -0).
            half = k // 2
            a = random_codes(rng, (m, half), fa, "finite")
            w = random_codes(rng, (half, n), fw, "finite")
            a = np.concatenate([a, a ^ 0x80, random_codes(rng, (m, k - 2 * half), fa, "finite")], 1)
            w = np.concatenate([w, w, random_codes(rng, (k - 2 * half, n), fw, "finite")], 0)
        else:
            a = random_codes(rng, (m, k), fa, profile)
            w = random_codes(rng, (k, n), fw, profile)
        got = golden.matmul(a.astype(np.uint8), w.astype(np.uint8), mode)
        want = golden.exact_reference_matmul(a, w, mode)
        assert got.shape == (m, n)
        assert got.dtype == (np.uint32 if mode.is_fp8 else np.int32)
        mismatch = np.argwhere(got != want)
        assert mismatch.size == 0, (
            f"{mode.name} {profile} shape {(m, k, n)}: first mismatch at {mismatch[0]}: "
            f"{got[tuple(mismatch[0])]:#x} != {want[tuple(mismatch[0])]:#x}")
        if mode.is_fp8:
            g = got.astype(np.int64)
            seen["nan"] += np.sum(g == NAN)
            seen["inf"] += np.sum((g == POS_INF) | (g == NEG_INF))
            seen["neg_zero"] += np.sum(g == NEG_ZERO)
            seen["pos_zero"] += np.sum(g == 0)
            exp_field = (g >> 23) & 0xFF
            seen["finite"] += np.sum((exp_field != 0) & (exp_field != 0xFF))
    if mode.is_fp8:
        # The random profiles really reached every kind of result.
        needed = ["nan", "neg_zero", "pos_zero", "finite"]
        if mode.weight_format == E5M2 or mode.activation_format == E5M2:
            needed.append("inf")
        assert all(seen[key] > 0 for key in needed), seen


# --------------------------------------------------------------------------- exact accumulation

@pytest.mark.parametrize("fmt,big,tiny", [(E4M3, 448.0, 2.0**-9), (E5M2, 57344.0, 2.0**-16)],
                         ids=["E4M3", "E5M2"])
def test_cancellation_is_exact_in_every_order(fmt, big, tiny):
    mode = MatmulMode.E4M3 if fmt == E4M3 else MatmulMode.E5M2
    terms = [(big, big), (tiny, tiny), (-big, big)]
    expected = f32_bits(tiny * tiny)  # 2**-18 (E4M3) or 2**-32 (E5M2), exactly
    for order in itertools.permutations(terms):
        a_values = [t[0] for t in order]
        w_values = [t[1] for t in order]
        assert dot(mode, a_values, w_values) == expected, order
    # Why exactness matters: sequential float32 accumulation loses the tiny
    # term in the order big + tiny - big (and so does float64, for E5M2).
    acc = np.float32(0)
    for x, y in terms:
        acc = np.float32(acc + np.float32(x) * np.float32(y))
    assert acc != np.float32(tiny * tiny)
    assert acc == 0


def test_exact_sum_beyond_float64():
    """A sum that needs 57 significant bits: float64 accumulation rounds the wrong way."""
    mode = MatmulMode.E5M2
    # 2**24 + 1 + 2**-32: just above the tie between 2**24 and 2**24 + 2.
    a = [4096.0, 1.0, 2.0**-16]
    w = [4096.0, 1.0, 2.0**-16]
    assert dot(mode, a, w) == f32_bits(16777218.0)
    a_codes = np.array([[code(v, E5M2) for v in a]], dtype=np.uint8)
    w_codes = np.array([[code(v, E5M2)] for v in w], dtype=np.uint8)
    ref = golden.reference_matmul(a_codes, w_codes, mode)[0, 0]
    assert ref == 16777217.0               # float64 lost the 2**-32
    assert np.float32(ref) == np.float32(16777216.0)  # and then ties to even: wrong


# --------------------------------------------------------------------------- FP32 rounding

@pytest.mark.parametrize("mode", FP8_MODES, ids=lambda m: m.name)
def test_round_to_nearest_even_at_fp32_boundary_large(mode):
    """Sums around 2**24, where the FP32 spacing is 2 (products of E5M2 and E4M3 values)."""
    # 2**24 from products each mode can form: E4M3 tops out at 448, so E4M3 x E4M3
    # needs 256 products of 256 * 256; E5M2 reaches 4096 * 4096 in one.
    if mode == MatmulMode.E4M3:
        big_a, big_w, reps = [256.0], [256.0], 256    # 256 * 65536 = 2**24
    elif mode == MatmulMode.E5M2:
        big_a, big_w, reps = [4096.0], [4096.0], 1
    elif mode == MatmulMode.E4M3_E5M2:
        big_a, big_w, reps = [256.0], [8192.0], 8     # 8 * 2**21 = 2**24
    else:
        big_a, big_w, reps = [8192.0], [256.0], 8
    base_a, base_w = big_a * reps, big_w * reps

    def total(extra_a, extra_w):
        return dot(mode, base_a + extra_a, base_w + extra_w)

    assert total([], []) == f32_bits(2.0**24)
    assert total([1.0], [1.0]) == f32_bits(2.0**24)                      # 2**24 + 1: tie, even down
    assert total([1.0, 1.0], [1.0, 2.0]) == f32_bits(2.0**24 + 4)        # 2**24 + 3: tie, even up
    assert total([1.0, 1.0], [1.0, 1.0]) == f32_bits(2.0**24 + 2)        # exact
    # The smallest subnormals of each operand's format: a product far below the tie.
    small = 2.0**-9 if mode.activation_format == E4M3 else 2.0**-16
    small_w = 2.0**-9 if mode.weight_format == E4M3 else 2.0**-16
    # Just above and just below the tie 2**24 + 1:
    assert total([1.0, small], [1.0, small_w]) == f32_bits(2.0**24 + 2)
    assert total([1.0, -small], [1.0, small_w]) == f32_bits(2.0**24)
    # Carry into the exponent: 2**25 - 1 is a tie between 2**25 - 2 (odd
    # significand) and 2**25: rounds up into the next binade.
    assert total(big_a * reps + [-1.0], big_w * reps + [1.0]) == f32_bits(2.0**25)
    # And negative: -(2**24 + 1) ties to -2**24; -(2**24 + 3) to -(2**24 + 4).
    neg_a = [-x for x in base_a]
    assert dot(mode, neg_a + [-1.0], base_w + [1.0]) == f32_bits(-(2.0**24))
    assert dot(mode, neg_a + [-1.0, -1.0], base_w + [1.0, 2.0]) == f32_bits(-(2.0**24 + 4))


def test_round_to_nearest_even_small_binade_e4m3():
    """Ties in the binade [128, 256) (FP32 spacing 2**-16), built from E4M3 subnormals."""
    mode = MatmulMode.E4M3
    s = 2.0**-9
    base_a, base_w = [8.0], [16.0]  # 128
    cases = [
        ([s], [2 * s], 128.0),                          # 128 + 2**-17: tie, even down
        ([s, s], [2 * s, s], 128.0 + 2.0**-16),         # tie + 2**-18: up
        ([s, -s], [2 * s, s], 128.0),                   # tie - 2**-18: down
        ([s], [6 * s], 128.0 + 2.0**-15),               # 128 + 3 * 2**-16: tie, even up
        ([s], [4 * s], 128.0 + 2.0**-16),               # exact
    ]
    for extra_a, extra_w, expected in cases:
        assert dot(mode, base_a + extra_a, base_w + extra_w) == f32_bits(expected), expected


def test_exact_to_fp32_bits_against_float():
    """exact_to_fp32_bits agrees with float32 rounding of values exact in float64."""
    rng = np.random.default_rng(7)
    n = rng.integers(-2**53 + 1, 2**53, size=4000)
    n[:200] = rng.integers(-2**30, 2**30, size=200)
    n[200:400] = (rng.integers(1, 2**24, size=200) * 2 + 1) << 4  # ties somewhere in the bits
    exponents = rng.integers(-200, 100, size=4000)
    values = np.ldexp(n.astype(np.float64), exponents)       # exact: |n| < 2**53, no underflow
    assert np.all(np.ldexp(values, -exponents) == n.astype(np.float64))
    with np.errstate(over="ignore"):
        want = values.astype(np.float32).view(np.uint32)
    got = golden.exact_to_fp32_bits(n.astype(object), exponents)
    assert got.dtype == np.uint32
    assert np.array_equal(got, want)
    # Python-int input beyond 64 bits, and scalars.
    assert golden.exact_to_fp32_bits((1 << 80) + 1, -32) == f32_bits(2.0**48)
    assert golden.exact_to_fp32_bits((1 << 80) + (1 << 56), -32) == f32_bits(2.0**48)    # tie
    assert golden.exact_to_fp32_bits((1 << 80) + (1 << 56) + 1, -32) == f32_bits(2.0**48 + 2**25)
    assert golden.exact_to_fp32_bits((1 << 24) - 1, 0) == f32_bits(2.0**24 - 1)
    assert golden.exact_to_fp32_bits((1 << 25) - 1, 0) == f32_bits(2.0**25)  # carry
    assert golden.exact_to_fp32_bits(0, 5) == 0
    assert golden.exact_to_fp32_bits(1, -149) == 1                      # smallest subnormal
    assert golden.exact_to_fp32_bits(1, -150) == 0                      # tie to even: 0
    assert golden.exact_to_fp32_bits(3, -151) == 1
    assert golden.exact_to_fp32_bits(1, 128) == POS_INF
    assert golden.exact_to_fp32_bits(-1, 128) == NEG_INF


# --------------------------------------------------------------------------- specials

def test_nan_and_infinity_rules():
    e5, e4 = MatmulMode.E5M2, MatmulMode.E4M3
    inf, nan = float("inf"), float("nan")
    # NaN operand (E4M3 has only S.1111.111)
    a = np.array([[0x7F, 0x38]], dtype=np.uint8)
    w = np.array([[0x38], [0x38]], dtype=np.uint8)
    assert golden.matmul(a, w, e4)[0, 0] == NAN
    assert golden.matmul(a ^ 0x80, w, e4)[0, 0] == NAN           # NaN is sign 0, canonical
    assert dot(e5, [nan, 1.0], [1.0, 1.0]) == NAN
    for nan_code in (0x7D, 0x7E, 0x7F, 0xFD):
        a = np.array([[nan_code]], dtype=np.uint8)
        assert golden.matmul(a, np.array([[0x3C]], dtype=np.uint8), e5)[0, 0] == NAN
    # Inf x 0 (either side, either zero sign), even next to finite products
    assert dot(e5, [inf, 2.0], [0.0, 3.0]) == NAN
    assert dot(e5, [-0.0, 2.0], [inf, 3.0]) == NAN
    assert dot(MatmulMode.E4M3_E5M2, [0.0], [-inf]) == NAN
    assert dot(MatmulMode.E5M2_E4M3, [-inf], [-0.0]) == NAN
    # +Inf + -Inf
    assert dot(e5, [inf, inf], [1.0, -1.0]) == NAN
    assert dot(e5, [inf, 2.0], [1.0, -inf]) == NAN
    # Infinities of one sign
    assert dot(e5, [inf, 57344.0], [2.0, -57344.0]) == POS_INF
    assert dot(e5, [-inf, inf], [2.0, -3.0]) == NEG_INF
    assert dot(MatmulMode.E4M3_E5M2, [448.0, 1.0], [inf, 1.0]) == POS_INF
    assert dot(MatmulMode.E5M2_E4M3, [-inf, 1.0], [448.0, -1.0]) == NEG_INF
    # NaN wins over infinities
    assert dot(e5, [inf, nan], [1.0, 1.0]) == NAN


@pytest.mark.parametrize("mode", FP8_MODES, ids=lambda m: m.name)
def test_signed_zero_rules(mode):
    # All products negative zeros -> -0
    assert dot(mode, [-0.0, -0.0, 0.0], [1.0, 0.0, -2.0]) == NEG_ZERO
    assert dot(mode, [-0.0], [0.0]) == NEG_ZERO
    # One positive zero among them -> +0
    assert dot(mode, [-0.0, -0.0, 0.0], [1.0, 0.0, 2.0]) == 0
    assert dot(mode, [-0.0, -0.0], [-1.0, 1.0]) == 0
    # Nonzero products cancelling exactly -> +0 (RNE: x - x = +0)
    assert dot(mode, [-2.0, 2.0], [1.0, 1.0]) == 0
    assert dot(mode, [-2.0, 2.0, -0.0], [1.0, 1.0, 1.0]) == 0
    # K = 0: empty sum, +0
    a = np.zeros((2, 0), dtype=np.uint8)
    w = np.zeros((0, 3), dtype=np.uint8)
    out = golden.matmul(a, w, mode)
    assert out.shape == (2, 3) and out.dtype == np.uint32 and np.all(out == 0)


# --------------------------------------------------------------------------- integer modes

def _int_loop(a_values, w_values):
    m, k = len(a_values), len(w_values)
    n = len(w_values[0]) if k else 0
    return [[sum(a_values[i][kk] * w_values[kk][j] for kk in range(k)) for j in range(n)]
            for i in range(m)]


@pytest.mark.parametrize("mode", INT_MODES, ids=lambda m: m.name)
def test_integer_extremes(mode):
    lo = 0 if mode == MatmulMode.UINT8 else -128
    hi = 255 if mode == MatmulMode.UINT8 else 127
    for k in (1, 7, 1000, MAX_EXACT_K):
        for av, wv in [(lo, -128), (hi, -128), (hi, 127), (lo, 127), (-1 if lo < 0 else 1, -1)]:
            a = golden.int_codes(np.full((2, k), av))
            w = golden.int_codes(np.full((k, 3), wv))
            out = golden.matmul(a, w, mode)
            assert out.dtype == np.int32
            assert np.all(out == av * wv * k), (mode, k, av, wv)
    # The extremes of the mode: |sum| stays below 2**31 at the largest K
    a = golden.int_codes(np.full((1, MAX_EXACT_K), hi if mode == MatmulMode.UINT8 else -128))
    w = golden.int_codes(np.full((MAX_EXACT_K, 1), -128))
    expected = (255 if mode == MatmulMode.UINT8 else -128) * -128 * MAX_EXACT_K
    assert golden.matmul(a, w, mode)[0, 0] == expected
    assert -2**31 <= expected < 2**31
    # Random values against a plain Python loop
    rng = np.random.default_rng(3 + mode.value)
    a_values = rng.integers(lo, hi + 1, size=(6, 50))
    w_values = rng.integers(-128, 128, size=(50, 5))
    a_values[0] = lo
    w_values[:, 0] = -128
    out = golden.matmul(golden.int_codes(a_values), golden.int_codes(w_values), mode)
    assert out.tolist() == _int_loop(a_values.tolist(), w_values.tolist())
    # Codes, not values: 0x80 is -128 as an int8 activation, 128 as a uint8 one
    a = np.array([[0x80]], dtype=np.uint8)
    w = np.array([[0x02]], dtype=np.uint8)
    assert golden.matmul(a, w, mode)[0, 0] == (256 if mode == MatmulMode.UINT8 else -256)
    assert golden.matmul(a, np.array([[0xFF]], dtype=np.uint8), mode)[0, 0] == (
        -128 if mode == MatmulMode.UINT8 else 128)


# --------------------------------------------------------------------------- float reference

@pytest.mark.parametrize("mode", [MatmulMode.E4M3, MatmulMode.E5M2_E4M3], ids=lambda m: m.name)
def test_close_to_float64_reference_on_large_matrix(mode):
    rng = np.random.default_rng(11)
    a = golden.fp8_codes(rng.normal(size=(64, 384)), mode.activation_format)
    w = golden.fp8_codes(rng.normal(scale=4.0, size=(384, 64)), mode.weight_format)
    got = golden.result_to_float(golden.matmul(a, w, mode), mode)
    ref = golden.reference_matmul(a, w, mode)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(ref))
    ulp = np.spacing(np.abs(got).astype(np.float32)).astype(np.float64)
    err_ulps = np.abs(got - ref) / ulp
    print(f"\n{mode.name}: max |golden - float64 reference| = {err_ulps.max():.4f} FP32 ulp, "
          f"max relative {np.max(np.abs(got - ref) / np.abs(ref)):.3e}")
    # The golden result is the correctly rounded exact sum: within 0.5 ulp of it.
    # Measured: max 0.5000 ulp exactly, from exact ties (37 of 4096 sums for E4M3;
    # most sums are FP32 values already, the median error is 0).
    assert err_ulps.max() <= 0.5
    assert np.all(np.abs(got - ref) <= ulp)
    # Here the float64 reference happens to be exact too: every partial sum is a
    # multiple of 2**-18 (E4M3) or 2**-25 (E5M2 x E4M3) far below 2**53 grid
    # steps in magnitude. So golden is exactly one float32 rounding of it.
    assert np.array_equal(ref.astype(np.float32).astype(np.float64), got)


# --------------------------------------------------------------------------- validation

def test_argument_validation():
    ok_a = np.zeros((2, 3), dtype=np.uint8)
    ok_w = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="inner dimensions"):
        golden.matmul(ok_a, np.zeros((4, 4), dtype=np.uint8), MatmulMode.INT8)
    with pytest.raises(ValueError, match="2-D"):
        golden.matmul(np.zeros(3, dtype=np.uint8), ok_w, MatmulMode.INT8)
    with pytest.raises(ValueError, match="2-D"):
        golden.matmul(ok_a, np.zeros((3, 4, 1), dtype=np.uint8), MatmulMode.E4M3)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        golden.matmul(ok_a.astype(np.int64) + 256, ok_w, MatmulMode.E4M3)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        golden.matmul(ok_a, ok_w.astype(np.int64) - 1, MatmulMode.INT8)
    with pytest.raises(ValueError, match="integer codes"):
        golden.matmul(ok_a.astype(np.float64), ok_w, MatmulMode.E5M2)
    with pytest.raises(ValueError, match="MAX_EXACT_K"):
        golden.matmul(np.zeros((0, MAX_EXACT_K + 1), dtype=np.uint8),
                      np.zeros((MAX_EXACT_K + 1, 0), dtype=np.uint8), MatmulMode.E5M2)
    for bad_mode in (6, 7, "E4M3", None, FP8Format.E4M3):
        with pytest.raises(ValueError, match="invalid matmul mode"):
            golden.matmul(ok_a, ok_w, bad_mode)
    for fn in (golden.reference_matmul, golden.exact_reference_matmul):
        with pytest.raises(ValueError, match="inner dimensions"):
            fn(ok_a, np.zeros((4, 4), dtype=np.uint8), MatmulMode.E4M3)
    # Integer values of a mode are accepted; K = MAX_EXACT_K is
    assert golden.matmul(ok_a, ok_w, 3).dtype == np.uint32
    assert golden.matmul(np.zeros((0, MAX_EXACT_K), dtype=np.uint8),
                         np.zeros((MAX_EXACT_K, 0), dtype=np.uint8), MatmulMode.E5M2).shape == (0, 0)


# --------------------------------------------------------------------------- timing

@pytest.mark.parametrize("mode", list(MatmulMode), ids=lambda m: m.name)
def test_timing_transformer_sized(mode):
    """M=128, K=384, N=384 runs (time printed, not asserted) and matches the float reference."""
    rng = np.random.default_rng(5)
    if mode.is_fp8:
        a = golden.fp8_codes(rng.normal(size=(128, 384)), mode.activation_format)
        w = golden.fp8_codes(rng.normal(size=(384, 384)), mode.weight_format)
    else:
        lo = 0 if mode == MatmulMode.UINT8 else -128
        a = golden.int_codes(rng.integers(lo, lo + 256, size=(128, 384)))
        w = golden.int_codes(rng.integers(-128, 128, size=(384, 384)))
    start = time.perf_counter()
    out = golden.matmul(a, w, mode)
    elapsed = time.perf_counter() - start
    print(f"\nmatmul 128x384x384 {mode.name}: {elapsed * 1e3:.1f} ms")
    assert out.shape == (128, 384)
    got = golden.result_to_float(out, mode)
    ref = golden.reference_matmul(a, w, mode)
    if mode.is_fp8:
        ulp = np.spacing(np.abs(got).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(got - ref) <= ulp)
    else:
        assert np.array_equal(got, ref)
