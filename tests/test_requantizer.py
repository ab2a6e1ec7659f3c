"""INT8 requantizer: golden model vs plain Python integers and the float reference, quantize_multiplier,
RTL vs golden in Amaranth and on Verilator.

The stimulus (:func:`edge_cases`, :func:`random_cases`) is shared with the cocotb bench
``tests/benches/tb_requantizer.py``.
"""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rtl.numerics.requantizer import Requantizer, RequantizerInput, RequantizerOutput
from sim.cocotb_runner import run_cocotb
from sim.compare import assert_fields_equal
from sim.golden import requantizer as golden
from sim.payload import pack, unpack
from sim.pysim import output_timing, run_stream

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MULTIPLIER_MAX = (1 << 31) - 1
FIELDS = ("accumulator", "bias", "multiplier", "shift", "zero_point")
OUTPUTS = ("value", "saturated", "error")


# --- stimulus ---------------------------------------------------------------------------------

def _split(x, rng):
    """``accumulator, bias`` int64 arrays with ``accumulator + bias == x`` (|x| up to 2**32)."""
    x = np.asarray(x, dtype=np.int64)
    low = np.maximum(INT32_MIN, x - INT32_MAX)
    high = np.minimum(INT32_MAX, x - INT32_MIN)
    acc = low + (rng.random(x.shape) * (high - low + 1)).astype(np.int64)
    acc = np.minimum(acc, high)
    return acc, x - acc


def _cases(**fields):
    arrays = np.broadcast_arrays(*(np.asarray(fields[name], dtype=np.int64) for name in FIELDS))
    return {name: a.ravel().copy() for name, a in zip(FIELDS, arrays)}


def _concat(*parts):
    return {name: np.concatenate([p[name] for p in parts]) for name in FIELDS}


def edge_cases():
    """Every edge case, as a dict of int64 field arrays (about 9,000 elements).

    - all combinations of extreme and small accumulators and biases (INT32_MIN +
      INT32_MIN and INT32_MAX + INT32_MAX leave INT32), multipliers 0, 1, 2**30,
      2**30 + 1, 2**31 - 1, shifts -32 (invalid), -31, -30, -1, 0, 1, 29, 30, 31
      (invalid), zero points -128, 0, 127;
    - exact ties (the remainder is exactly half of 2**t), positive and negative,
      and the numerators one below and one above them;
    - every y (the rounded, scaled value) in -300..300 with zero points -128, -1, 0,
      1, 127: both sides of both saturation limits and of the RTL's [-256, 256]
      pre-limit.
    """
    rng = np.random.default_rng(2024)
    extremes = [INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX]
    grid = np.array(list(itertools.product(
        extremes, [INT32_MIN, -1, 0, 1, INT32_MAX], [0, 1, 1 << 30, (1 << 30) + 1, MULTIPLIER_MAX],
        [-32, -31, -30, -1, 0, 1, 29, 30, 31], [-128, 0, 127]))).T
    parts = [_cases(**dict(zip(FIELDS, grid)))]

    # Ties with multiplier 1: x = k * 2**t + 2**(t - 1) + d, d in {-1, 0, 1}, t = 1..32.
    for t in range(1, 33):
        shift = 31 - t
        k_max = ((1 << 32) - (1 << (t - 1)) - 2) >> t
        k = np.unique(np.concatenate([[0, -1, 1, -2, k_max, -k_max - 1],
                                      rng.integers(-k_max - 1, k_max + 1, 6)]))
        x = (k[:, None] << t) + (1 << (t - 1)) + np.array([-1, 0, 1])
        x = x.ravel()
        x = x[(x >= 2 * INT32_MIN) & (x <= 2 * INT32_MAX)]
        acc, bias = _split(x, rng)
        parts.append(_cases(accumulator=acc, bias=bias, multiplier=1, shift=shift, zero_point=0))

    # Ties with a wide multiplier: x * m = odd * 2**(t - 1), m = odd_m * 2**a, x = odd_x * 2**b.
    for t in range(1, 63):
        for a in sorted({0, min(30, t - 1), (t - 1) // 2}):
            b = t - 1 - a
            if b > 31:
                continue
            m = (rng.integers(0, 1 << min(30 - a, 29), 8) * 2 + 1) << a
            limit = ((1 << 32) >> b) // 2 - 1
            x = (rng.integers(-limit, limit + 1, 8) * 2 + 1) << b
            keep = (x >= 2 * INT32_MIN) & (x <= 2 * INT32_MAX)
            acc, bias = _split(x[keep], rng)
            parts.append(_cases(accumulator=acc, bias=bias, multiplier=m[keep], shift=31 - t,
                                zero_point=rng.integers(-128, 128, 8)[keep]))

    # y = x exactly (multiplier 2**30, shift 1: scale 1), across both clamps.
    y, zp = (v.ravel() for v in np.meshgrid(np.arange(-300, 301), [-128, -1, 0, 1, 127]))
    parts.append(_cases(accumulator=y, bias=0, multiplier=1 << 30, shift=1, zero_point=zp))
    # Scale 2**-20 around its ties: x = y * 2**20 + d gives y, y, y, y + 1 (and no more).
    d = np.array([-(1 << 19), -(1 << 19) + 1, (1 << 19) - 1, 1 << 19])
    x = ((np.arange(-300, 301) << 20)[:, None] + d).ravel()
    parts.append(_cases(accumulator=x, bias=0, multiplier=1 << 30, shift=-19, zero_point=0))
    return _concat(*parts)


def random_cases(rng, n):
    """``n`` random cases: half uniform over every field's full range (so shift includes
    its invalid codes and most results saturate), half with the scale sized so that the
    result lands near the INT8 range (mostly not saturated).
    """
    half = n // 2
    uniform = _cases(
        accumulator=rng.integers(INT32_MIN, INT32_MAX, half, endpoint=True),
        bias=rng.integers(INT32_MIN, INT32_MAX, half, endpoint=True),
        multiplier=rng.integers(0, MULTIPLIER_MAX, half, endpoint=True),
        shift=rng.integers(-32, 31, half, endpoint=True),
        zero_point=rng.integers(-128, 127, half, endpoint=True))
    rest = n - half
    bits = rng.integers(0, 33, rest)  # log-uniform magnitude of x = accumulator + bias
    x = rng.integers(0, 1 << 32, rest) >> (32 - bits)
    x = np.where(rng.random(rest) < 0.5, -x, x)
    acc, bias = _split(np.clip(x, 2 * INT32_MIN, 2 * INT32_MAX), rng)
    # |y| ~ 2**k: |x| * 2**(shift - 1) * [1, 2) with multiplier in [2**30, 2**31).
    k = rng.integers(-2, 10, rest)
    shift = np.clip(k + 1 - bits, -31, 30)
    scaled = _cases(accumulator=acc, bias=bias,
                    multiplier=rng.integers(1 << 30, MULTIPLIER_MAX, rest, endpoint=True),
                    shift=shift, zero_point=rng.integers(-128, 127, rest, endpoint=True))
    return _concat(uniform, scaled)


def subsample(cases, n, rng):
    pick = np.sort(rng.choice(len(cases["shift"]), n, replace=False))
    return {name: a[pick] for name, a in cases.items()}


# --- an independent model: plain Python integers, an explicit remainder -----------------------

def requantize_python(accumulator, bias, multiplier, shift, zero_point):
    """One element, written as directly as possible: ``(value, saturated, error)``."""
    if not -31 <= shift <= 30:
        return 0, 0, 1
    x = accumulator + bias
    t = 31 - shift
    quotient, remainder = divmod(x * multiplier, 2 ** t)  # 0 <= remainder < 2**t
    y = quotient + (1 if 2 * remainder >= 2 ** t else 0)  # a tie rounds up
    z = y + zero_point
    value = min(max(z, -128), 127)
    return value, int(value != z), 0


def python_fields(cases):
    rows = [requantize_python(*map(int, row)) for row in zip(*(cases[name] for name in FIELDS))]
    columns = list(zip(*rows))
    return {name: np.array(col, dtype=np.int64) for name, col in zip(OUTPUTS, columns)}


def golden_fields(cases):
    return golden.requantize(*(cases[name] for name in FIELDS))


# --- golden model -----------------------------------------------------------------------------

def test_golden_matches_python_on_edge_cases():
    cases = edge_cases()
    expected = python_fields(cases)
    assert_fields_equal(golden_fields(cases), expected, inputs=cases)
    # The edge set reaches what it claims to.
    x = cases["accumulator"] + cases["bias"]
    assert x.min() == 2 * INT32_MIN and x.max() == 2 * INT32_MAX
    assert expected["error"].sum() > 0 and expected["saturated"].sum() > 0
    valid = expected["error"] == 0
    assert set(expected["value"][valid & (expected["saturated"] == 1)]) == {-128, 127}


def test_golden_matches_python_on_random_cases():
    cases = random_cases(np.random.default_rng(1), 120_000)
    expected = python_fields(cases)
    assert_fields_equal(golden_fields(cases), expected, inputs=cases)
    # Both halves of the distribution do their job.
    valid = expected["error"] == 0
    unsaturated = valid & (expected["saturated"] == 0)
    assert expected["error"].mean() > 0.01
    assert expected["saturated"].mean() > 0.3
    assert unsaturated.mean() > 0.3
    assert len(set(expected["value"][unsaturated])) == 256


@pytest.mark.parametrize("acc,bias,multiplier,shift,zp,value,saturated,error", [
    # Ties round half up (toward +infinity): 3 * 0.5 = 1.5 -> 2, -1.5 -> -1.
    (3, 0, 1 << 30, 0, 0, 2, 0, 0),
    (-3, 0, 1 << 30, 0, 0, -1, 0, 0),
    (5, 0, 1 << 30, 0, 0, 3, 0, 0),
    (-5, 0, 1 << 30, 0, 0, -2, 0, 0),
    (-1, 0, 1 << 30, 0, 0, 0, 0, 0),  # -0.5 -> 0
    (1, 0, 1 << 30, 0, 0, 1, 0, 0),  # 0.5 -> 1
    (-3, 0, 1 << 30, -1, 0, -1, 0, 0),  # -0.75 -> -1
    # Scale 1 (shift 1), with the zero point and both clamps.
    (100, 27, 1 << 30, 1, 0, 127, 0, 0),
    (100, 28, 1 << 30, 1, 0, 127, 1, 0),
    (-100, -28, 1 << 30, 1, 0, -128, 0, 0),
    (-100, -29, 1 << 30, 1, 0, -128, 1, 0),
    (255, 0, 1 << 30, 1, -128, 127, 0, 0),
    (256, 0, 1 << 30, 1, -128, 127, 1, 0),
    (-256, 0, 1 << 30, 1, 127, -128, 1, 0),
    (-255, 0, 1 << 30, 1, 127, -128, 0, 0),
    # The sum leaves INT32 and is kept: (2**32 - 2) * (2**31 - 1) * 2**-62 = 1.99999... -> 2.
    (INT32_MAX, INT32_MAX, MULTIPLIER_MAX, -31, 0, 2, 0, 0),
    (INT32_MIN, INT32_MIN, 1 << 30, -31, 0, -1, 0, 0),  # -2**32 * 2**-32 = -1 exactly
    (INT32_MIN, INT32_MIN, MULTIPLIER_MAX, 30, 5, -128, 1, 0),
    (INT32_MAX, 1, 0, 30, -7, -7, 0, 0),  # multiplier 0
    # Invalid shift codes.
    (100, 0, 1 << 30, 31, 3, 0, 0, 1),
    (-100, 0, 1 << 30, -32, 3, 0, 0, 1),
])
def test_golden_hand_computed(acc, bias, multiplier, shift, zp, value, saturated, error):
    got = golden.requantize(acc, bias, multiplier, shift, zp)
    assert (int(got["value"]), int(got["saturated"]), int(got["error"])) == (value, saturated, error)
    assert requantize_python(acc, bias, multiplier, shift, zp) == (value, saturated, error)


@pytest.mark.parametrize("field,value", [
    ("accumulator", INT32_MAX + 1), ("bias", INT32_MIN - 1), ("multiplier", -1),
    ("multiplier", 1 << 31), ("shift", 32), ("shift", -33), ("zero_point", 128),
])
def test_golden_rejects_values_outside_fields(field, value):
    args = dict(accumulator=0, bias=0, multiplier=0, shift=0, zero_point=0)
    args[field] = value
    with pytest.raises(ValueError, match=field):
        golden.requantize(**args)


# --- quantize_multiplier ----------------------------------------------------------------------

@pytest.mark.parametrize("real,expected", [
    (0.0, (0, 0)),
    (-0.0, (0, 0)),
    (0.5, (1 << 30, 0)),
    (1.0, (1 << 30, 1)),
    (0.75, (3 << 29, 0)),
    (0.25, (1 << 30, -1)),
    (1 / 3, (1431655765, -1)),  # 2**32 / 3 = 1431655765.33 -> down
    (2 / 3, (1431655765, 0)),
    (0.1, (1717986918, -3)),  # 0.8 * 2**31 = 1717986918.4 -> down
    (0.3, (1288490189, -1)),  # 0.6 * 2**31 = 1288490188.8 -> up
    (2.0 ** -31, (1 << 30, -30)),
    (2.0 ** -32, (1 << 30, -31)),  # the smallest scale kept
    (2.0 ** -32 * 0.75, (0, 0)),  # frexp exponent -32: shift below -31
    (2.0 ** -33, (0, 0)),
    (1e-300, (0, 0)),
    (5e-324, (0, 0)),  # a subnormal
    (2.0 ** 29, (1 << 30, 30)),  # the largest exact power of two
    (2.0 ** 30, (MULTIPLIER_MAX, 30)),  # shift 31 -> saturated
    (1e30, (MULTIPLIER_MAX, 30)),
    (0.99999999999, (1 << 30, 1)),  # q * 2**31 rounds up to 2**31: halved, shift + 1
    (1 - 2.0 ** -33, (1 << 30, 1)),  # 2**31 - 0.25 -> 2**31
    (1 - 2.0 ** -31, (MULTIPLIER_MAX, 0)),  # exactly 2**31 - 1
    (0.5 + 2.0 ** -32, ((1 << 30) + 1, 0)),  # 2**30 + 0.5: half away from zero
])
def test_quantize_multiplier(real, expected):
    assert golden.quantize_multiplier(real) == expected
    multiplier, shift = expected
    assert multiplier == 0 or (1 << 30) <= multiplier <= MULTIPLIER_MAX
    assert golden.SHIFT_MIN <= shift <= golden.SHIFT_MAX


@pytest.mark.parametrize("real", [-1.0, -1e-30, float("nan"), float("inf"), float("-inf")])
def test_quantize_multiplier_rejects(real):
    with pytest.raises(ValueError, match="Real multiplier must"):
        golden.quantize_multiplier(real)


def test_quantize_multipliers_vectorized():
    reals = np.array([[0.5, 1.0], [0.75, 2.0 ** -40]])
    multipliers, shifts = golden.quantize_multipliers(reals)
    assert multipliers.shape == shifts.shape == (2, 2)
    assert multipliers.tolist() == [[1 << 30, 1 << 30], [3 << 29, 0]]
    assert shifts.tolist() == [[0, 1], [0, 0]]
    with pytest.raises(ValueError):
        golden.quantize_multipliers([0.5, -0.5])


def test_quantize_multiplier_relative_error():
    """In the normal range the Q31 scale is within a relative 2**-31 of the real one."""
    rng = np.random.default_rng(5)
    reals = np.exp2(rng.uniform(-32, 30, 20_000))
    multipliers, shifts = golden.quantize_multipliers(reals)
    for real, multiplier, shift in zip(reals, multipliers, shifts):
        quantized = Fraction(int(multiplier)) * Fraction(2) ** (int(shift) - 31)
        assert abs(quantized - Fraction(real)) <= Fraction(real) * Fraction(1, 1 << 31)


# --- float reference --------------------------------------------------------------------------

def reference_cases(rng, n):
    """``(accumulator, bias, real_scale, zero_point)`` arrays: a third with log-uniform
    scales over 2**-36..2**32 (through both ends of quantize_multiplier's range) and
    any accumulator, a third sized to land in INT8, and a third constructed to lie
    within a float64 ulp of a tie, where the Q31 scale can round the other way.
    """
    third = n // 3
    acc = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    zp = rng.integers(-128, 127, n, endpoint=True)
    scale = np.exp2(rng.uniform(-36, 32, n))
    scale[rng.random(n) < 0.01] = 0.0
    # Sized: |x| log-uniform, the scale chosen for a result in -200..200.
    bits = rng.integers(1, 32, n)
    x = np.maximum(1, rng.integers(0, 1 << 31, n) >> (31 - bits)) * rng.choice([-1, 1], n)
    target = rng.uniform(-200, 200, n)
    sized = slice(third, 2 * third)
    acc[sized], bias[sized] = x[sized], 0
    scale[sized] = np.abs(target[sized] / x[sized])
    # Near ties: scale = (h + 1/2) / x rounded to float64.
    near = slice(2 * third, n)
    h = np.floor(np.abs(target[near]))
    acc[near], bias[near] = np.abs(x[near]), 0
    scale[near] = (h + 0.5) / np.abs(x[near])
    return acc, bias, scale, zp


def test_fixed_point_within_one_lsb_of_float_reference():
    """|requantize - reference| <= 1 everywhere, and a difference happens only where a
    tie lies between the exact ``x * real_scale`` and ``x * quantized_scale``: within
    ``|x| * |real_scale - quantized_scale|`` (at most a relative 2**-31) of ``x * real_scale``.
    """
    rng = np.random.default_rng(9)
    acc, bias, scale, zp = reference_cases(rng, 120_000)
    multiplier, shift = golden.quantize_multipliers(scale)
    fixed = golden.requantize(acc, bias, multiplier, shift, zp)
    assert not fixed["error"].any()
    reference = golden.reference_requantize(acc, bias, scale, zp)
    error = np.abs(fixed["value"] - reference)
    assert error.max() <= 1
    differ = np.flatnonzero(error != 0)
    # The near-tie third makes many differ, so the bound is exercised; random scales
    # almost never land within a relative 2**-31 of a tie.
    near = 2 * (len(acc) // 3)
    assert np.count_nonzero(error[near:]) > 1000
    assert np.count_nonzero(error[:near]) < 20
    for i in differ:
        x = int(acc[i]) + int(bias[i])
        real = Fraction(float(scale[i]))
        quantized = Fraction(int(multiplier[i])) * Fraction(2) ** (int(shift[i]) - 31)
        v = x * real
        tie_distance = abs(v - (math.floor(v) + Fraction(1, 2)))
        assert tie_distance <= abs(x) * abs(real - quantized), (i, x, float(real))


# --- RTL --------------------------------------------------------------------------------------

def test_latency_and_throughput_pysim():
    """One result per cycle with latency `Requantizer.latency`, checked on an idle-to-full run."""
    dut = Requantizer()
    payloads = pack(RequantizerInput, dict(accumulator=np.arange(16), multiplier=1 << 30, shift=1))
    seen = output_timing(dut, payloads)
    # Scale 1: each output value equals its input accumulator.
    values = unpack(RequantizerOutput, [p for _, p in seen])["value"]
    assert [c for c, _ in seen] == [dut.latency + k for k in range(16)]
    assert values.tolist() == list(range(16))


@pytest.mark.parametrize("stall,backpressure", [(0, 0), (0.5, 0.5)])
def test_rtl_matches_golden_pysim(stall, backpressure):
    rng = np.random.default_rng(17)
    cases = _concat(subsample(edge_cases(), 2000, rng), random_cases(rng, 1000))
    out = run_stream(Requantizer(), pack(RequantizerInput, cases), stall=stall,
                     backpressure=backpressure, seed=3)
    assert_fields_equal(unpack(RequantizerOutput, out), golden_fields(cases), inputs=cases)


@pytest.mark.cocotb
def test_rtl_edge_and_random_verilator():
    run_cocotb(Requantizer(), name="requantizer", test_module="tests.benches.tb_requantizer",
               testcase="edge_and_random", extra_env={"SEED": 21, "COUNT": 100_000})


@pytest.mark.cocotb
def test_rtl_random_stalls_verilator():
    run_cocotb(Requantizer(), name="requantizer", test_module="tests.benches.tb_requantizer",
               testcase="random_stalls", extra_env={"SEED": 11})


# --- extended requantizer: INT16 output, 16-bit zero point, residual term -----------------------

EXT_FIELDS = ("accumulator", "bias", "multiplier", "shift", "zero_point", "wide", "residual",
              "residual_multiplier")
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
D_MAX = 0xFFFF


def _ext_cases(**fields):
    arrays = np.broadcast_arrays(*(np.asarray(fields[name], dtype=np.int64) for name in EXT_FIELDS))
    return {name: a.ravel().copy() for name, a in zip(EXT_FIELDS, arrays)}


def _ext_concat(*parts):
    return {name: np.concatenate([p[name] for p in parts]) for name in EXT_FIELDS}


def _keep_in_int32(acc, residual, d):
    """The accumulator moved so that ``acc + residual * d`` stays in INT32 (the golden
    model's precondition; the RTL is exact beyond it, see test_ext_rtl_exact_beyond_int32)."""
    rd = np.asarray(residual, dtype=np.int64) * np.asarray(d, dtype=np.int64)
    return np.clip(acc, INT32_MIN - rd, INT32_MAX - rd)


def _ext_split(x, rng):
    """``accumulator, bias, residual, d`` with ``acc + residual * d + bias == x`` (|x| <= 2**32)
    and ``acc + residual * d`` in INT32."""
    x = np.asarray(x, dtype=np.int64)
    residual = rng.integers(-128, 128, x.shape)
    d = np.where(rng.random(x.shape) < 0.2, rng.choice([0, D_MAX], x.shape),
                 rng.integers(0, D_MAX + 1, x.shape))
    total, bias = _split(x, rng)  # total in INT32
    acc = total - residual * d
    outside = (acc < INT32_MIN) | (acc > INT32_MAX)  # then no residual: acc = total
    d = np.where(outside, 0, d)
    return np.where(outside, total, acc), bias, residual, d


def ext_edge_cases():
    """Edge cases of the extended requantizer (about 25,000 elements):

    - a grid of extreme accumulators, biases, multipliers (0, 1, 2**30, 2**31 - 1), shifts
      (-32 and 31 invalid, -31, 0, 1, 30), zero points (-32768, -128, 0, 127, 32767), both
      widths and residual pairs (0 x 0, -128 x 65535, 127 x 65535, 1 x 1, -1 x 0, 127 x 0),
      the accumulator moved so that ``acc + residual * d`` reaches both INT32 limits;
    - y (scale 1) on both sides of both clamps of both widths and of the RTL's
      [-65536, 65536] pre-limit, with extreme zero points, the residual making up part of y;
    - exact ties and their neighbours, t = 1..32, with a residual term.
    """
    rng = np.random.default_rng(4242)
    pairs = np.array([(0, 0), (-128, D_MAX), (127, D_MAX), (1, 1), (-1, 0), (127, 0)])
    grid = np.array(list(itertools.product(
        [INT32_MIN, -1, 0, 1, INT32_MAX], [INT32_MIN, 0, INT32_MAX], [0, 1, 1 << 30, MULTIPLIER_MAX],
        [-32, -31, 0, 1, 30, 31], [INT16_MIN, -128, 0, 127, INT16_MAX], [0, 1], range(len(pairs))))).T
    acc, bias, multiplier, shift, zp, wide, pair = grid
    residual, d = pairs[pair].T
    parts = [_ext_cases(accumulator=_keep_in_int32(acc, residual, d), bias=bias, multiplier=multiplier,
                        shift=shift, zero_point=zp, wide=wide, residual=residual,
                        residual_multiplier=d)]

    # Scale 1: y = x around -65536, -32768, -128, 0, 127, 32767, 65536.
    y = np.concatenate([np.arange(c - 12, c + 13) for c in (-65536, -32768, -128, 0, 127, 32767, 65536)]
                       + [np.arange(-300, 301, 7)])
    zps = [INT16_MIN, INT16_MIN + 1, -129, -128, -1, 0, 1, 127, 128, INT16_MAX - 1, INT16_MAX]
    y, zp, wide = (v.ravel() for v in np.meshgrid(y, zps, [0, 1]))
    acc, bias, residual, d = _ext_split(y, rng)
    parts.append(_ext_cases(accumulator=acc, bias=bias, multiplier=1 << 30, shift=1, zero_point=zp,
                            wide=wide, residual=residual, residual_multiplier=d))

    # Ties with multiplier 1: x = k * 2**t + 2**(t - 1) + e, e in {-1, 0, 1}.
    for t in range(1, 33):
        k_max = ((1 << 32) - (1 << (t - 1)) - 2) >> t
        k = np.unique(np.concatenate([[0, -1, 1, -2, k_max, -k_max - 1],
                                      rng.integers(-k_max - 1, k_max + 1, 4)]))
        x = ((k[:, None] << t) + (1 << (t - 1)) + np.array([-1, 0, 1])).ravel()
        x = x[(x >= 2 * INT32_MIN) & (x <= 2 * INT32_MAX)]
        acc, bias, residual, d = _ext_split(x, rng)
        parts.append(_ext_cases(accumulator=acc, bias=bias, multiplier=1, shift=31 - t,
                                zero_point=rng.integers(INT16_MIN, INT16_MAX + 1, len(x)),
                                wide=rng.integers(0, 2, len(x)), residual=residual,
                                residual_multiplier=d))
    return _ext_concat(*parts)


def ext_random_cases(rng, n):
    """``n`` random cases: half uniform over every field (the sum kept in INT32), half with
    the scale sized so that the result lands near the INT8 or INT16 range."""
    half = n // 2
    residual = rng.integers(-128, 128, half)
    d = rng.integers(0, D_MAX + 1, half)
    uniform = _ext_cases(
        accumulator=_keep_in_int32(rng.integers(INT32_MIN, INT32_MAX, half, endpoint=True), residual, d),
        bias=rng.integers(INT32_MIN, INT32_MAX, half, endpoint=True),
        multiplier=rng.integers(0, MULTIPLIER_MAX, half, endpoint=True),
        shift=rng.integers(-32, 31, half, endpoint=True),
        zero_point=rng.integers(INT16_MIN, INT16_MAX, half, endpoint=True),
        wide=rng.integers(0, 2, half), residual=residual, residual_multiplier=d)
    rest = n - half
    bits = rng.integers(0, 33, rest)
    x = rng.integers(0, 1 << 32, rest) >> (32 - bits)
    x = np.where(rng.random(rest) < 0.5, -x, x)
    acc, bias, residual, d = _ext_split(np.clip(x, 2 * INT32_MIN, 2 * INT32_MAX), rng)
    wide = rng.integers(0, 2, rest)
    k = np.where(wide == 1, rng.integers(-2, 18, rest), rng.integers(-2, 10, rest))
    zp = np.where(wide == 1, rng.integers(INT16_MIN, INT16_MAX, rest, endpoint=True),
                  rng.integers(-128, 127, rest, endpoint=True))
    scaled = _ext_cases(accumulator=acc, bias=bias,
                        multiplier=rng.integers(1 << 30, MULTIPLIER_MAX, rest, endpoint=True),
                        shift=np.clip(k + 1 - bits, -31, 30), zero_point=zp, wide=wide,
                        residual=residual, residual_multiplier=d)
    return _ext_concat(uniform, scaled)


def requantize_ext_python(accumulator, bias, multiplier, shift, zero_point, wide, residual, d):
    """One element of the extended requantizer in plain integers: ``(value, saturated, error)``."""
    if not -31 <= shift <= 30:
        return 0, 0, 1
    x = accumulator + residual * d + bias
    t = 31 - shift
    quotient, remainder = divmod(x * multiplier, 2 ** t)
    y = quotient + (1 if 2 * remainder >= 2 ** t else 0)
    z = y + zero_point
    low, high = (INT16_MIN, INT16_MAX) if wide else (-128, 127)
    value = min(max(z, low), high)
    return value, int(value != z), 0


def ext_python_fields(cases):
    rows = [requantize_ext_python(*map(int, row)) for row in zip(*(cases[name] for name in EXT_FIELDS))]
    return {name: np.array(col, dtype=np.int64) for name, col in zip(OUTPUTS, zip(*rows))}


def ext_golden_fields(cases):
    """Expected outputs from the golden models: ``requantize_residual_int16``; for INT8
    outputs (``wide`` 0) its value clamped further to [-128, 127]."""
    from sim.golden.int16_ops import requantize_residual_int16
    c = cases
    out16 = requantize_residual_int16(c["accumulator"], c["residual"], c["residual_multiplier"],
                                      c["bias"], c["multiplier"], c["shift"], c["zero_point"])
    value8 = np.clip(out16["value"], -128, 127)
    narrow = {"value": value8, "saturated": out16["saturated"] | (value8 != out16["value"]),
              "error": out16["error"]}
    wide = c["wide"] == 1
    return {name: np.where(wide, out16[name], narrow[name]) for name in OUTPUTS}


def test_ext_golden_matches_python():
    rng = np.random.default_rng(3)
    cases = _ext_concat(ext_edge_cases(), ext_random_cases(rng, 40_000))
    expected = ext_golden_fields(cases)
    assert_fields_equal(expected, ext_python_fields(cases), inputs=cases)
    # The stimulus reaches what it claims: both clamps of both widths, errors, extreme sums.
    total = cases["accumulator"] + cases["residual"] * cases["residual_multiplier"]
    assert total.min() == INT32_MIN and total.max() == INT32_MAX
    valid = expected["error"] == 0
    sat = valid & (expected["saturated"] == 1)
    wide = cases["wide"] == 1
    assert set(expected["value"][sat & wide]) == {INT16_MIN, INT16_MAX}
    assert set(expected["value"][sat & ~wide]) == {-128, 127}
    unsat = valid & (expected["saturated"] == 0)
    assert len(set(expected["value"][unsat & ~wide])) == 256
    assert np.count_nonzero(unsat & wide & (np.abs(expected["value"]) > 128)) > 1000


def test_ext_narrow_equals_int8_golden():
    """With ``wide`` 0 and an INT8 zero point the extended unit is the INT8 requantizer of
    ``acc + residual * d`` (sim.golden.requantizer.requantize)."""
    rng = np.random.default_rng(8)
    cases = _ext_concat(ext_edge_cases(), ext_random_cases(rng, 20_000))
    keep = (cases["wide"] == 0) & (np.abs(cases["zero_point"] + 0.5) < 128)
    cases = {k: v[keep] for k, v in cases.items()}
    total = cases["accumulator"] + cases["residual"] * cases["residual_multiplier"]
    int8 = golden.requantize(total, cases["bias"], cases["multiplier"], cases["shift"],
                             cases["zero_point"])
    assert_fields_equal(ext_golden_fields(cases), int8, inputs=cases)


@pytest.mark.parametrize("acc,bias,mult,shift,zp,wide,res,d,value,saturated,error", [
    (1000, 0, 1 << 30, 1, 0, 1, 0, 0, 1000, 0, 0),
    (1000, 0, 1 << 30, 1, 0, 0, 0, 0, 127, 1, 0),
    (0, 5, 1 << 30, 1, 0, 1, -1, 300, -295, 0, 0),
    (INT32_MIN + 128 * D_MAX, 0, 1 << 30, 1, 0, 1, -128, D_MAX, INT16_MIN, 1, 0),  # sum INT32_MIN
    (INT32_MAX - 127 * D_MAX, 0, 1 << 30, -31, 0, 1, 127, D_MAX, 0, 0, 0),  # (2**31 - 1) / 2**32
    (INT32_MAX - 127 * D_MAX, INT32_MAX, MULTIPLIER_MAX, -31, -1, 0, 127, D_MAX, 1, 0, 0),
    (0, 0, 1 << 30, 1, INT16_MAX, 1, 1, 1, INT16_MAX, 1, 0),  # 1 + 32767
    (0, 0, 1 << 30, 1, INT16_MIN, 1, -1, 1, INT16_MIN, 1, 0),
    (0, 0, 1 << 30, 1, INT16_MIN, 1, 0, D_MAX, INT16_MIN, 0, 0),  # d without a residual
    (-32768, 0, 1 << 30, 1, 0, 1, 0, 0, INT16_MIN, 0, 0),
    (65536, 0, 1 << 30, 1, INT16_MIN, 1, 0, 0, INT16_MAX, 1, 0),
    (65535, 0, 1 << 30, 1, INT16_MIN, 1, 0, 0, INT16_MAX, 0, 0),
    (3, 0, 1 << 30, 0, 0, 1, 127, 2, 129, 0, 0),  # (3 + 254) / 2 = 128.5 rounds up
    (3, 0, 1 << 30, 0, 0, 0, 127, 2, 127, 1, 0),  # the same, INT8
    (100, 0, 1 << 30, 31, 3, 1, 5, 5, 0, 0, 1),  # invalid shift
    (100, 0, 1 << 30, -32, 3, 0, 5, 5, 0, 0, 1),
])
def test_ext_python_hand_computed(acc, bias, mult, shift, zp, wide, res, d, value, saturated, error):
    assert requantize_ext_python(acc, bias, mult, shift, zp, wide, res, d) == (value, saturated, error)
    got = ext_golden_fields(_ext_cases(accumulator=acc, bias=bias, multiplier=mult, shift=shift,
                                       zero_point=zp, wide=wide, residual=res, residual_multiplier=d))
    assert (int(got["value"][0]), int(got["saturated"][0]), int(got["error"][0])) == (value, saturated, error)


def test_ext_latency_and_throughput_pysim():
    from rtl.numerics.requantizer import ExtendedRequantizerInput, ExtendedRequantizerOutput
    dut = Requantizer(extended=True)
    acc = np.arange(16) * 1000 - 8000
    payloads = pack(ExtendedRequantizerInput, dict(accumulator=acc, multiplier=1 << 30, shift=1, wide=1,
                                                   residual=1, residual_multiplier=7))
    seen = output_timing(dut, payloads)
    assert dut.latency == 5
    assert [c for c, _ in seen] == [dut.latency + k for k in range(16)]
    assert unpack(ExtendedRequantizerOutput, [p for _, p in seen])["value"].tolist() == (acc + 7).tolist()


@pytest.mark.parametrize("stall,backpressure", [(0, 0), (0.5, 0.5)])
def test_ext_rtl_matches_golden_pysim(stall, backpressure):
    from rtl.numerics.requantizer import ExtendedRequantizerInput, ExtendedRequantizerOutput
    rng = np.random.default_rng(29 + int(10 * stall))
    cases = _ext_concat(subsample(ext_edge_cases(), 2000, rng), ext_random_cases(rng, 1000))
    out = run_stream(Requantizer(extended=True), pack(ExtendedRequantizerInput, cases), stall=stall,
                     backpressure=backpressure, seed=5)
    assert_fields_equal(unpack(ExtendedRequantizerOutput, out), ext_golden_fields(cases), inputs=cases)


def test_ext_rtl_exact_beyond_int32():
    """``acc + residual * d`` outside INT32 (the golden model refuses it): the RTL still
    computes it exactly (checked against the plain-integer model)."""
    from rtl.numerics.requantizer import ExtendedRequantizerInput, ExtendedRequantizerOutput
    from sim.golden.int16_ops import requantize_residual_int16
    rng = np.random.default_rng(31)
    n = 200
    residual = rng.choice([-128, 127], n)
    cases = _ext_cases(accumulator=np.where(residual > 0, INT32_MAX, INT32_MIN), bias=rng.choice(
        [INT32_MIN, 0, INT32_MAX], n), multiplier=rng.integers(1 << 30, MULTIPLIER_MAX, n, endpoint=True),
        shift=rng.integers(-31, 1, n), zero_point=rng.integers(INT16_MIN, INT16_MAX, n, endpoint=True),
        wide=rng.integers(0, 2, n), residual=residual, residual_multiplier=rng.integers(1, D_MAX + 1, n))
    with pytest.raises(ValueError, match="INT32"):
        requantize_residual_int16(cases["accumulator"], cases["residual"], cases["residual_multiplier"],
                                  cases["bias"], cases["multiplier"], cases["shift"], cases["zero_point"])
    out = run_stream(Requantizer(extended=True), pack(ExtendedRequantizerInput, cases))
    expected = ext_python_fields(cases)
    assert expected["saturated"].sum() < n  # not all pinned at a clamp
    assert_fields_equal(unpack(ExtendedRequantizerOutput, out), expected, inputs=cases)


@pytest.mark.cocotb
def test_ext_rtl_edge_and_random_verilator():
    run_cocotb(Requantizer(extended=True), name="requantizer_ext",
               test_module="tests.benches.tb_requantizer_ext", extra_env={"SEED": 23, "COUNT": 60_000})
