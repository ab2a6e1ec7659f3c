"""``jalapeno run``: each op end to end on the simulated core, and its error paths."""

import json

import numpy as np
import pytest

from jalapeno.cli import main
from sim.golden.fp8_codec import ML_DTYPES
from sim.golden.matmul import matmul as golden_matmul
from rtl.numerics.fp8_format import FP8Format


pytestmark = pytest.mark.cocotb


def save(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return str(path)


def run(tmp_path, *args):
    return main(["run", *args, "--core", "small"])


def test_matmul_int8_and_stats(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (19, 23)).astype(np.int8)
    b = rng.integers(-128, 128, (23, 9)).astype(np.int8)
    out, stats = tmp_path / "c.npy", tmp_path / "stats.json"
    assert run(tmp_path, "matmul", "--a", save(tmp_path, "a", a), "--b", save(tmp_path, "b", b),
               "--dtype", "int8", "--out", str(out), "--stats", str(stats)) == 0
    c = np.load(out)
    assert c.dtype == np.int32 and np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    counters = json.loads(stats.read_text())
    assert counters["useful_macs"] == 19 * 23 * 9
    assert 0 < counters["mac_utilization"] <= 1 and counters["cycles"] > 0


def test_matmul_uint8(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 30)).astype(np.uint8)
    b = rng.integers(-128, 128, (30, 5)).astype(np.int8)
    out = tmp_path / "c.npy"
    assert run(tmp_path, "matmul", "--a", save(tmp_path, "a", a), "--b", save(tmp_path, "b", b),
               "--dtype", "uint8", "--out", str(out)) == 0
    assert np.array_equal(np.load(out), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_matmul_fp8_is_the_exact_sum_rounded_once(tmp_path, fmt):
    fp8 = FP8Format.E4M3 if fmt == "e4m3" else FP8Format.E5M2
    rng = np.random.default_rng(2)
    codes_a, codes_b = rng.integers(0, 256, (6, 11)), rng.integers(0, 256, (11, 4))
    finite = lambda c: np.isfinite(c.astype(np.uint8).view(ML_DTYPES[fp8]).astype(np.float32))
    codes_a[~finite(codes_a)] = 0x38
    codes_b[~finite(codes_b)] = 0x38
    a = codes_a.astype(np.uint8).view(ML_DTYPES[fp8]).astype(np.float32)
    b = codes_b.astype(np.uint8).view(ML_DTYPES[fp8]).astype(np.float32)
    out = tmp_path / "c.npy"
    assert run(tmp_path, "matmul", "--a", save(tmp_path, "a", a), "--b", save(tmp_path, "b", b),
               "--dtype", fmt, "--out", str(out)) == 0
    mode = 2 if fmt == "e4m3" else 3
    expected = golden_matmul(codes_a, codes_b, mode).view(np.float32)
    got = np.load(out)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("float-for-int8", "must hold integers"),
    ("out-of-range", "outside -128..127"),
    ("shapes", "inner dimensions differ"),
    ("not-2d", "2-D"),
    ("unrepresentable", "not exactly representable in E4M3"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    a = np.ones((3, 4), np.int8)
    b = np.ones((4, 2), np.int8)
    dtype = "int8"
    if case == "float-for-int8":
        a = a.astype(np.float32)
    elif case == "out-of-range":
        a = np.full((3, 4), 300, np.int16)
    elif case == "shapes":
        b = np.ones((5, 2), np.int8)
    elif case == "not-2d":
        a = np.ones(4, np.int8)
    elif case == "unrepresentable":
        a, b, dtype = np.full((3, 4), 1.1, np.float32), np.ones((4, 2), np.float32), "e4m3"
    a_path = save(tmp_path, "a", a) if case != "missing" else str(tmp_path / "missing.npy")
    out = tmp_path / "c.npy"
    assert run(tmp_path, "matmul", "--a", a_path, "--b", save(tmp_path, "b", b),
               "--dtype", dtype, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_softmax_with_valid_lengths_and_causal(tmp_path):
    from sim.golden.softmax import exp_table, softmax
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (9, 21)).astype(np.int8)
    lengths = rng.integers(0, 22, 9)
    out = tmp_path / "p.npy"
    assert run(tmp_path, "softmax", "--x", save(tmp_path, "x", x), "--scale", "0.07",
               "--valid-len", save(tmp_path, "l", lengths), "--out", str(out)) == 0
    expected = softmax(x, lengths, False, np.arange(9), 0, exp_table(0.07))
    got = np.load(out)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert run(tmp_path, "softmax", "--x", save(tmp_path, "x", x), "--scale", "0.07", "--causal",
               "--out", str(out)) == 0
    assert np.array_equal(np.load(out), softmax(x, 21, True, np.arange(9), 0, exp_table(0.07)))


@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_layernorm_int8_and_int32(tmp_path, dtype):
    from sim.golden.layernorm import layernorm, quantize_eps, quantize_params, reference_layernorm
    from sim.golden.requantizer import quantize_multiplier, requantize
    rng = np.random.default_rng(4)
    n = 32
    x = rng.integers(-128, 128, (6, n)) if dtype == np.int8 else rng.integers(-50000, 50000, (6, n))
    gamma, beta = rng.uniform(0.5, 1.5, n).astype(np.float32), rng.uniform(-1, 1, n).astype(np.float32)
    out = tmp_path / "y.npy"
    assert run(tmp_path, "layernorm", "--x", save(tmp_path, "x", x.astype(dtype)), "--in-scale", "0.01",
               "--gamma", save(tmp_path, "g", gamma), "--beta", save(tmp_path, "b", beta),
               "--out-scale", "0.03", "--eps", "1e-5", "--out", str(out)) == 0
    in_scale, codes = 0.01, x
    if dtype == np.int32:
        in_scale = 0.01 * np.abs(x).max() / 127
        multiplier, shift = quantize_multiplier(0.01 / in_scale)
        codes = requantize(x, 0, multiplier, shift, 0)["value"]
    gamma_q, beta_q, gamma_frac = quantize_params(gamma, beta, 0.03)
    expected = layernorm(codes, gamma_q, beta_q, gamma_frac, quantize_eps(1e-5, in_scale, n))
    got = np.load(out)
    assert got.dtype == np.int8 and np.array_equal(got, expected.astype(np.int8))
    # and it is LayerNorm: within a few output steps of the float reference
    reference = reference_layernorm(codes, in_scale, gamma, beta, 1e-5, 0.03)
    assert np.abs(got - np.clip(np.rint(reference), -128, 127)).max() <= 3


def test_gelu(tmp_path):
    from sim.golden.activation import apply, build_table, gelu
    x = np.arange(-128, 128, dtype=np.int8).reshape(8, 32)
    out = tmp_path / "y.npy"
    assert run(tmp_path, "gelu", "--x", save(tmp_path, "x", x), "--in-scale", "0.05",
               "--out-scale", "0.04", "--out", str(out)) == 0
    assert np.array_equal(np.load(out), apply(build_table(gelu, 0.05, 0.04), x))


@pytest.mark.parametrize("args, message", [
    (["softmax", "--scale", "-1"], "--scale must be a positive number"),
    (["layernorm", "--in-scale", "0.1", "--out-scale", "0.1", "--gamma", "G", "--beta", "G"],
     "--gamma must be"),
    (["gelu", "--in-scale", "0", "--out-scale", "1"], "--in-scale must be a positive number"),
])
def test_bad_op_arguments(tmp_path, capsys, args, message):
    x = save(tmp_path, "x", np.ones((2, 8), np.int8))
    g = save(tmp_path, "g", np.ones(3, np.float32))
    args = [g if a == "G" else a for a in args]
    out = tmp_path / "y.npy"
    assert run(tmp_path, *args, "--x", x, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
