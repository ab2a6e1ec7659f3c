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
