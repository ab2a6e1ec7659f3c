"""The accelerator core end to end: programs through the runtime on the Verilator model
(``SimTransport``), every result checked against the golden models in ``sim/golden``."""

import dataclasses

import numpy as np
import pytest

from jalapeno.accelerator import Accelerator, DeviceError
from jalapeno.program import Program
from jalapeno.sim_transport import MemoryTiming, SimTransport
from rtl.core.status import COUNTER_BASE, Counter, ErrorCode, Register
from rtl.isa import Bank, GemmInstruction, Opcode, PostOp, TableTarget, encode
from rtl.matmul.mode import MatmulMode
from sim.core_model import PRESETS
from sim.golden import activation as golden_activation
from sim.golden import layernorm as golden_layernorm
from sim.golden import softmax as golden_softmax
from sim.golden.int16_ops import layernorm_int16
from sim.golden.matmul import matmul as golden_matmul
from sim.golden.requantizer import quantize_multipliers, requantize


pytestmark = pytest.mark.cocotb

#: The small core: a 4 x 4 array (4-byte words), 8192-word INP and WGT, a 4096-word OUT,
#: 128-row passes. Tests that depend on the buffer sizes take them from here.
CONFIG = PRESETS["small"]
INP_WORDS, WGT_WORDS, OUT_WORDS = CONFIG.inp_words, CONFIG.wgt_words, CONFIG.out_words


@pytest.fixture(scope="module")
def accelerator():
    with SimTransport(CONFIG) as transport:
        yield Accelerator(transport)


def random_codes(rng, shape, mode):
    """Random 8-bit codes; a third of them from the extremes of the format."""
    codes = rng.integers(0, 256, shape)
    if MatmulMode(mode).value >= MatmulMode.E4M3.value:
        extremes = np.array([0x00, 0x80, 0x7E, 0xFE, 0x7F, 0xFF, 0x01, 0x81, 0x7B, 0x7C, 0xFC])
    else:
        extremes = np.array([0x80, 0x7F, 0x00, 0xFF, 0x01])
    mask = rng.random(shape) < 0.33
    codes[mask] = rng.choice(extremes, size=int(mask.sum()))
    return codes


SHAPES = [(1, 1, 1), (3, 5, 2), (5, 7, 6), (17, 9, 13), (37, 21, 19), (130, 40, 30)]


@pytest.mark.parametrize("mode", list(MatmulMode), ids=lambda m: m.name)
def test_matmul_every_mode(accelerator, mode):
    rng = np.random.default_rng(100 + mode.value)
    for m, k, n in SHAPES:
        a, w = random_codes(rng, (m, k), mode), random_codes(rng, (k, n), mode)
        got = accelerator.matmul(a, w, mode)
        expected = golden_matmul(a, w, mode)
        assert got.shape == expected.shape
        mismatches = np.count_nonzero(got != expected)
        assert mismatches == 0, f"{mode.name} {m}x{k}x{n}: {mismatches} mismatches"


@pytest.mark.parametrize("to", ["e4m3", "int8", "int16"])
@pytest.mark.parametrize("mode", [m for m in MatmulMode if m.is_fp8], ids=lambda m: m.name)
def test_matmul_convert_every_target(accelerator, mode, to):
    """CONVERT: the FP32 sums of every FP8 mode times 2**shift (per column, -64..64, both ends
    among them) to E4M3 / INT8 / INT16 on the core, against sim/golden/fp_convert.py; the
    shifts put results on both sides of the clamps, NaN and Inf sums among them."""
    from sim.golden import fp_convert
    rng = np.random.default_rng(300 + 3 * mode.value + len(to))
    seen = []
    for m, k, n in [(1, 1, 1), (5, 7, 6), (37, 21, 19), (130, 40, 30), (64, 3, 8)]:
        a, w = random_codes(rng, (m, k), mode), random_codes(rng, (k, n), mode)
        if k == 3:          # short sums: mostly finite (a NaN or Inf code spoils a whole sum)
            a, w = a & 0xBB, w & 0xBB
        shift = rng.integers(-24, 12, n)
        shift[:2] = [-64, 64][:n]
        sums = golden_matmul(a, w, mode)
        if to == "e4m3":
            expected = fp_convert.fp32_to_e4m3(sums, shift[None])
        else:
            expected = fp_convert.fp32_to_int(sums, shift[None], int(to[3:]))["value"]
        got = accelerator.matmul(a, w, mode, to=to, shift=shift)
        assert got.dtype == Accelerator.CONVERT_TARGETS[to][1] and got.shape == (m, n)
        assert np.count_nonzero(got.astype(np.int64) != expected) == 0, f"{mode.name} {m}x{k}x{n}"
        seen.append(expected.ravel())
    seen = np.concatenate(seen)
    if to != "e4m3":        # both clamps reached, and values strictly inside them
        limit = 1 << (int(to[3:]) - 1)
        assert (seen == limit - 1).any() and (seen == -limit).any()
        assert ((seen > -limit) & (seen < limit - 1) & (seen != 0)).any()


def test_matmul_convert_host_validation(accelerator):
    a = np.zeros((2, 3), int)
    for kwargs, match in [
        (dict(mode=MatmulMode.INT8, to="e4m3"), "FP8 mode"),
        (dict(mode=MatmulMode.E4M3, to="fp16"), "to must be"),
        (dict(mode=MatmulMode.E4M3, to="int8", shift=65), "shift"),
        (dict(mode=MatmulMode.E4M3, to="int8", shift=[1, 2, 3]), "shift"),
    ]:
        with pytest.raises(ValueError, match=match):
            accelerator.matmul(a, a.T, **kwargs)
    assert accelerator.matmul(np.zeros((0, 3), int), a.T, MatmulMode.E4M3, to="int16").dtype == np.int16


def test_convert_shift_beyond_the_converters_is_an_error(accelerator):
    """A parameter set whose shift the host would refuse (|k| > 64) gives BAD_FIELD."""
    from rtl.isa import ConvertTarget
    a = np.full((3, 4), 0x38)          # E4M3 1.0
    params = accelerator._params(4, 0, 0, [0, 1, 100, 2], 0, shift_range=(-128, 127))
    with pytest.raises(DeviceError) as info:
        accelerator._gemm(a, a.T, MatmulMode.E4M3, PostOp.CONVERT, params,
                          target=ConvertTarget.INT8)
    assert info.value.code == ErrorCode.BAD_FIELD
    assert np.array_equal(accelerator.matmul(a, a.T, MatmulMode.E4M3, to="int8", shift=1),
                          np.full((3, 3), 8))


def test_matmul_with_k_beyond_half_the_weight_buffer(accelerator):
    """K = half of WGT + 152 (as many WGT words per output tile: 4,248 of 8,192): the blocks
    use the whole buffer one after the other; RAW, REQUANT with a residual, CONVERT."""
    k = WGT_WORDS // 2 + 152
    rng = np.random.default_rng(21)
    a, w = random_codes(rng, (9, k), 0), random_codes(rng, (k, 9), 0)
    assert np.array_equal(accelerator.matmul(a, w, 0), golden_matmul(a, w, 0))
    x, w8, kwargs, expected = residual_linear_case(rng, 9, k, 9, 2, True, True)
    assert np.array_equal(accelerator.linear(x, w8, **kwargs), expected)
    from sim.golden import fp_convert
    a, w = random_codes(rng, (6, k), 2) & 0xBB, random_codes(rng, (k, 5), 2) & 0xBB
    got = accelerator.matmul(a, w, MatmulMode.E4M3, to="int16", shift=-4)
    assert np.array_equal(got, fp_convert.fp32_to_int16(golden_matmul(a, w, MatmulMode.E4M3), -4))
    with pytest.raises(ValueError, match="too large for the weight buffer"):
        accelerator.matmul(np.zeros((2, WGT_WORDS + 4), int), np.zeros((WGT_WORDS + 4, 3), int), 0)


def test_matmul_many_blocks_and_row_chunks(accelerator):
    # K = 256 fills a weight half with 8 tiles: N = 50 needs 2 blocks; M = 300 needs 3 chunks.
    rng = np.random.default_rng(7)
    a, w = random_codes(rng, (300, 256), 0), random_codes(rng, (256, 50), 0)
    assert np.array_equal(accelerator.matmul(a, w, MatmulMode.INT8), golden_matmul(a, w, 0))
    stats = accelerator.last_stats
    assert stats["mac_cycles"] == 300 * (256 // 4) * 13   # one A row per pass row
    assert stats["load_words"] > 0 and stats["store_words"] == 300 * 13 * 4


def linear_case(rng, m, k, n):
    x, w = random_codes(rng, (m, k), 0), random_codes(rng, (k, n), 0)
    bias = rng.integers(-20000, 20000, n)
    multiplier, shift = quantize_multipliers(rng.uniform(2e-5, 4e-3, n))
    zero_point = rng.integers(-4, 4, n)
    accumulators = golden_matmul(x, w, MatmulMode.INT8)
    expected = requantize(accumulators, bias[None, :], multiplier[None, :], shift[None, :],
                          zero_point[None, :])
    return (x, w, dict(bias=bias, multiplier=multiplier, shift=shift, zero_point=zero_point),
            expected)


#: A K whose A rows fill INP in chunks of 64 rows (K = 512: k_tiles = 128 words per row).
K_INP_64_ROWS = CONFIG.lanes * INP_WORDS // 64


@pytest.mark.parametrize("shape", [(5, 7, 6), (70, 33, 21), (129, 64, 9)])
def test_linear_requantizes_per_channel(accelerator, shape):
    rng = np.random.default_rng(sum(shape))
    x, w, params, expected = linear_case(rng, *shape)
    got = accelerator.linear(x, w, **params)
    assert got.dtype == np.int8
    assert np.array_equal(got, expected["value"].astype(np.int8))
    assert accelerator.last_stats["saturations"] == int(expected["saturated"].sum())


def test_linear_with_activation_table(accelerator):
    rng = np.random.default_rng(11)
    x, w, params, expected = linear_case(rng, 33, 20, 10)
    table = golden_activation.build_table(golden_activation.gelu, 0.05, 0.03)
    got = accelerator.linear(x, w, activation_table=table, **params)
    assert np.array_equal(got, golden_activation.apply(table, expected["value"].astype(np.int8)))
    # The table stays loaded until replaced: a plain linear afterwards is not activated.
    got = accelerator.linear(x, w, **params)
    assert np.array_equal(got, expected["value"].astype(np.int8))


def linear_cls_case(rng, m, k, n, cls_rows):
    """A linear case whose rows [0, cls_rows) have their own parameters (row class 1)."""
    x, w, params, _ = linear_case(rng, m, k, n)
    cls = dict(bias=rng.integers(-20000, 20000, n),
               multiplier=quantize_multipliers(rng.uniform(2e-5, 4e-3, n))[0],
               shift=quantize_multipliers(rng.uniform(2e-5, 4e-3, n))[1],
               zero_point=rng.integers(-4, 4, n))
    accumulators = golden_matmul(x, w, MatmulMode.INT8)
    expected = {}
    for part, rows, p in ((0, slice(0, cls_rows), cls), (1, slice(cls_rows, m), params)):
        r = requantize(accumulators[rows], *(np.asarray(p[f])[None, :] for f in
                                             ("bias", "multiplier", "shift", "zero_point")))
        for key, value in r.items():
            expected.setdefault(key, []).append(value)
    expected = {key: np.concatenate(value) for key, value in expected.items()}
    kwargs = dict(params, cls_rows=cls_rows, **{f"cls_{f}": v for f, v in cls.items()})
    return x, w, kwargs, expected


@pytest.mark.parametrize("shape, cls_rows", [
    ((5, 7, 6), 1), ((5, 7, 6), 3), ((5, 7, 6), 4), ((17, 9, 13), 1), ((17, 9, 13), 16),
    ((2, 4, 4), 1),
    # M = 300 in 3 chunks of up to 128 rows: the later chunks have no class-1 rows.
    ((300, 40, 10), 3),
    # K = 512: 64-row chunks (INP), 3 tiles per weight block, N = 30 in 3 blocks; the first
    # two chunks are all class 1 (param_base at the class-1 set), the third has 2 of them.
    ((140, K_INP_64_ROWS, 30), 130),
    ((9, 5, 3), 9),     # every row class 1
])
def test_linear_row_classes(accelerator, shape, cls_rows):
    rng = np.random.default_rng(sum(shape) + cls_rows)
    x, w, kwargs, expected = linear_cls_case(rng, *shape, cls_rows)
    got = accelerator.linear(x, w, **kwargs)
    assert np.array_equal(got, expected["value"].astype(np.int8))
    assert accelerator.last_stats["saturations"] == int(expected["saturated"].sum())


def test_linear_row_classes_with_activation_table(accelerator):
    rng = np.random.default_rng(12)
    x, w, kwargs, expected = linear_cls_case(rng, 33, 20, 10, 5)
    table = golden_activation.build_table(golden_activation.gelu, 0.05, 0.03)
    got = accelerator.linear(x, w, activation_table=table, **kwargs)
    assert np.array_equal(got, golden_activation.apply(table, expected["value"].astype(np.int8)))


def residual_linear_case(rng, m, k, n, cls_rows, wide, residual):
    """A linear with INT16 outputs (``wide``) and/or a residual input, and two row classes:
    residuals from both INT8 extremes, d in 0..65535 (both ends among them), scales that put
    the results on both sides of the clamps."""
    from sim.golden.int16_ops import requantize_residual_int16
    x, w = random_codes(rng, (m, k), 0), random_codes(rng, (k, n), 0)
    res = rng.integers(-128, 128, (m, n))
    res.flat[:4] = [-128, 127, -128, 127][:res.size]
    d = rng.integers(0, 1 << 16, n)
    d[:2] = [0, 0xFFFF][:n]
    if not residual:
        res, d = np.zeros((m, n), np.int64), np.zeros(n, np.int64)
    bits = 16 if wide else 8
    limit = 1 << (bits - 1)

    def params():
        multiplier, shift = quantize_multipliers(
            np.exp2(-rng.uniform(0, 11, n) - (0 if wide else 8)))
        zero_point = rng.integers(-limit // 16, limit // 16, n)
        zero_point[:1] = [limit - 1]
        return dict(bias=rng.integers(-(1 << 20), 1 << 20, n), multiplier=multiplier,
                    shift=shift, zero_point=zero_point)
    p0, p1 = params(), params()
    accumulators = golden_matmul(x, w, MatmulMode.INT8)
    expected = np.empty((m, n), np.int64)
    for rows, p in ((slice(0, cls_rows), p1), (slice(cls_rows, m), p0)):
        expected[rows] = requantize_residual_int16(
            accumulators[rows], res[rows], d[None],
            *(np.asarray(p[f])[None] for f in ("bias", "multiplier", "shift", "zero_point")))["value"]
    expected = np.clip(expected, -limit, limit - 1)
    kwargs = dict(p0, out_bits=bits, cls_rows=cls_rows, **{f"cls_{f}": v for f, v in p1.items()})
    if residual:
        kwargs.update(residual=res, residual_multiplier=d)
    return x, w, kwargs, expected


@pytest.mark.parametrize("shape, cls_rows, wide, residual", [
    ((5, 7, 6), 0, True, False),
    ((19, 33, 11), 0, False, True),
    ((70, 40, 22), 0, True, True),
    ((1, 1, 1), 0, True, True),
    # 300 rows in 3 chunks, the class boundary in the first.
    ((300, 40, 10), 3, True, True),
    # K = 512: INP-limited 64-row chunks, N = 30 in several blocks, the first two chunks
    # all class 1; the residual rows share each WGT half with the weights.
    ((140, K_INP_64_ROWS, 30), 130, True, True),
    ((9, 5, 3), 9, False, True),
], ids=["wide", "residual-int8", "wide-residual", "one", "chunks-classes", "blocks-classes",
        "all-class-1"])
def test_linear_int16_and_residual(accelerator, shape, cls_rows, wide, residual):
    """The residual GEMM: ``linear(out_bits=16, residual=...)`` requantizes the engine's sums
    with the residual added, in the GEMM's post op (no INT32 result leaves the core)."""
    rng = np.random.default_rng(sum(shape) + cls_rows + 2 * wide + residual)
    x, w, kwargs, expected = residual_linear_case(rng, *shape, cls_rows, wide, residual)
    got = accelerator.linear(x, w, **kwargs)
    assert got.dtype == (np.int16 if wide else np.int8)
    assert np.count_nonzero(got != expected) == 0
    if expected.size > 1:       # the case reaches the clamps, and not only them
        saturated = np.abs(expected) == (1 << (15 if wide else 7)) - (expected > 0)
        assert saturated.any() and (~saturated).any()


def test_linear_residual_with_activation_table(accelerator):
    rng = np.random.default_rng(14)
    x, w, kwargs, expected = residual_linear_case(rng, 33, 20, 10, 4, False, True)
    table = golden_activation.build_table(golden_activation.gelu, 0.05, 0.03)
    got = accelerator.linear(x, w, activation_table=table, **kwargs)
    assert np.array_equal(got, golden_activation.apply(table, expected.astype(np.int8)))


def test_linear_residual_host_validation(accelerator):
    x, w = np.zeros((2, 4), int), np.zeros((4, 3), int)
    ok = dict(bias=0, multiplier=1 << 30, shift=0)
    for kwargs, match in [
        (dict(out_bits=12), "out_bits"),
        (dict(out_bits=16, activation_table=np.zeros(256, int)), "activation table"),
        (dict(residual=np.zeros((2, 3), int)), "together"),
        (dict(residual=np.zeros((3, 2), int), residual_multiplier=1), "shape"),
        (dict(residual=np.full((2, 3), -129), residual_multiplier=1), "INT8"),
        (dict(residual=np.zeros((2, 3), int), residual_multiplier=1 << 16), "residual_multiplier"),
        (dict(zero_point=1 << 15, out_bits=16), "zero_point"),
    ]:
        with pytest.raises(ValueError, match=match):
            accelerator.linear(x, w, **ok, **kwargs)


def test_linear_row_classes_host_validation(accelerator):
    rng = np.random.default_rng(13)
    x, w, kwargs, _ = linear_cls_case(rng, 4, 4, 4, 1)
    for bad, message in ((dict(cls_rows=-1), "cls_rows must lie"), (dict(cls_rows=5), "cls_rows must lie"),
                         (dict(cls_rows=1.5), "cls_rows must be an integer"),
                         (dict(cls_bias=None), "needs cls_bias"),
                         (dict(cls_shift=99), "shift must be in")):
        with pytest.raises(ValueError, match=message):
            accelerator.linear(x, w, **{**kwargs, **bad})


@pytest.mark.parametrize("t", [1, 4, 37, 128])
def test_softmax_masks_and_lengths(accelerator, t):
    rng = np.random.default_rng(t)
    m = 70   # several chunks (of ROWWISE_CHUNK_WORDS = 512 words: 16 rows at T = 128)
    scores = random_codes(rng, (m, t), 0).astype(np.uint8).view(np.int8)
    table = golden_softmax.exp_table(rng.uniform(0.01, 0.2))
    lengths = rng.integers(0, t + 1, m)
    got = accelerator.softmax(scores, table, lengths=lengths)
    assert np.array_equal(got, golden_softmax.softmax(scores, lengths, False, np.arange(m), 0, table))
    got = accelerator.softmax(scores, table, causal=True, row_start=5, offset=-3)
    assert np.array_equal(got, golden_softmax.softmax(scores, t, True, np.arange(m) + 5, -3, table))


@pytest.mark.parametrize("n, rms", [(4, False), (64, False), (256, False), (96, True)])
def test_layernorm_rows(accelerator, n, rms):
    rng = np.random.default_rng(n)
    x = random_codes(rng, (21, n), 0).astype(np.uint8).view(np.int8)
    gamma_q, beta_q, gamma_frac = golden_layernorm.quantize_params(
        rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), rng.uniform(0.01, 0.1))
    eps_q = golden_layernorm.quantize_eps(1e-5, rng.uniform(0.01, 0.2), n)
    got = accelerator.layernorm(x, gamma_q, beta_q, gamma_frac, eps_q, rms=rms)
    expected = golden_layernorm.layernorm(x, gamma_q, beta_q, gamma_frac, eps_q, rms=rms)
    assert np.array_equal(got, expected.astype(np.int8))


@pytest.mark.parametrize("m, n, rms", [(1, 4, False), (37, 12, True), (21, 64, False),
                                       (40, 256, False), (9, 256, True)])
def test_layernorm_int16_rows(accelerator, m, n, rms):
    """INT16 rows (``wide``: 2 INP words per output word), residual-like with outliers, the
    first rows extreme (a single 32767 among zeros, all -32768, alternating extremes);
    40 rows of 256 need several INP chunks."""
    rng = np.random.default_rng(1600 + n + m)
    spread = np.exp(rng.uniform(0, np.log(8000), (m, 1)))
    x = np.rint(rng.normal(rng.uniform(-2000, 2000, (m, 1)), spread, (m, n)))
    x[rng.random((m, n)) < 0.01] = 32767
    extreme = [np.where(np.arange(n) == n // 2, 32767, 0), np.full(n, -32768),
               np.where(np.arange(n) % 2 == 0, 32767, -32768)]
    for r, row in enumerate(extreme[:m]):
        x[r] = row
    x = np.clip(x, -32768, 32767).astype(np.int16)
    gamma_q, beta_q, gamma_frac = golden_layernorm.quantize_params(
        rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), rng.uniform(0.01, 0.1))
    eps_q = golden_layernorm.quantize_eps(1e-5, rng.uniform(0.0005, 0.005), n)
    got = accelerator.layernorm(x, gamma_q, beta_q, gamma_frac, eps_q, rms=rms, in_bits=16)
    expected = layernorm_int16(x, gamma_q, beta_q, gamma_frac, eps_q, rms=rms)
    assert got.dtype == np.int8 and got.shape == (m, n)
    mismatches = np.count_nonzero(got != expected)
    assert mismatches == 0, f"{m}x{n} rms={rms}: {mismatches} mismatches"
    if x.size >= 200:   # not trivially passing on saturated or constant outputs
        assert len(np.unique(expected)) > 40


def test_layernorm_int16_host_validation(accelerator):
    ones = np.ones(8, int)
    with pytest.raises(ValueError, match="INT16"):
        accelerator.layernorm(np.full((2, 8), 32768), ones, ones, 0, 0, in_bits=16)
    with pytest.raises(ValueError, match="INT16"):
        accelerator.layernorm(np.full((2, 8), -32769), ones, ones, 0, 0, in_bits=16)
    with pytest.raises(ValueError, match="INT8"):
        accelerator.layernorm(np.full((2, 8), 300), ones, ones, 0, 0)
    with pytest.raises(ValueError, match="in_bits"):
        accelerator.layernorm(np.zeros((2, 8), int), ones, ones, 0, 0, in_bits=12)


def test_activation_every_code(accelerator):
    table = golden_activation.build_table(golden_activation.gelu, 0.04, 0.02)
    x = np.arange(-128, 128).reshape(16, 16)
    assert np.array_equal(accelerator.activation(x, table), golden_activation.apply(table, x.astype(np.int8)))
    x = x[:5, :7]
    assert np.array_equal(accelerator.activation(x, table), golden_activation.apply(table, x.astype(np.int8)))


def test_activation_blocks_in_one_program(accelerator):
    """Eight blocks (four column groups, some starting or ending inside a word, x two row
    ranges), each its own table, in one program: every element equals the golden table of
    its block; every code appears."""
    rng = np.random.default_rng(12)
    m, n = 23, 30                       # groups start and end inside words too
    x = rng.integers(-128, 128, (m, n))
    x.flat[:256] = np.arange(-128, 128)
    groups = [(0, 8), (8, 11), (11, 13), (13, 30)]
    tables, blocks = {}, []
    for g, (c0, c1) in enumerate(groups):
        for r0, r1 in ((0, 5), (5, m)):
            table = golden_activation.build_table(golden_activation.gelu, 0.02 + 0.01 * g,
                                                  0.01 + 0.005 * (r0 > 0))
            tables[(g, r0)] = table
            blocks.append((r0, r1, c0, c1, table))
    got = accelerator.activation_blocks(x, blocks)
    expected = np.empty((m, n), dtype=np.int8)
    for r0, r1, c0, c1, table in blocks:
        expected[r0:r1, c0:c1] = golden_activation.apply(table, x[r0:r1, c0:c1].astype(np.int8))
    assert np.array_equal(got, expected)
    assert len({t.tobytes() for t in tables.values()}) == len(blocks)   # all tables differ
    # Column ranges that differ between row ranges.
    a, b = tables[(0, 0)], tables[(1, 5)]
    staggered = [(0, 5, 0, 8, a), (0, 5, 8, n, b), (5, m, 0, 4, b), (5, m, 4, n, a)]
    expected = np.empty((m, n), dtype=np.int8)
    for r0, r1, c0, c1, table in staggered:
        expected[r0:r1, c0:c1] = golden_activation.apply(table, x[r0:r1, c0:c1].astype(np.int8))
    assert np.array_equal(accelerator.activation_blocks(x, staggered), expected)


def test_activation_blocks_reject_bad_blocks(accelerator):
    table = golden_activation.build_table(golden_activation.gelu, 0.04, 0.02)
    x = np.zeros((6, 12), dtype=np.int8)
    with pytest.raises(ValueError, match="cover x exactly once"):
        accelerator.activation_blocks(x, [(0, 6, 0, 8, table)])
    with pytest.raises(ValueError, match="cover x exactly once"):
        accelerator.activation_blocks(x, [(0, 6, 0, 12, table), (0, 1, 0, 4, table)])
    with pytest.raises(ValueError, match="outside x"):
        accelerator.activation_blocks(x, [(0, 7, 0, 12, table)])
    with pytest.raises(ValueError, match="256 int8 values"):
        accelerator.activation_blocks(x, [(0, 6, 0, 12, np.zeros(10))])


def test_requantize_standalone(accelerator):
    rng = np.random.default_rng(5)
    acc = rng.integers(-(1 << 31), 1 << 31, (19, 11))
    acc[0, :] = [-(1 << 31), (1 << 31) - 1] + [0] * 9
    multiplier, shift = quantize_multipliers(rng.uniform(1e-9, 1e-6, 11))
    bias = rng.integers(-1000, 1000, 11)
    expected = requantize(acc, bias[None], multiplier[None], shift[None], 0)
    got = accelerator.requantize(acc, bias=bias, multiplier=multiplier, shift=shift)
    assert np.array_equal(got, expected["value"].astype(np.int8))
    assert accelerator.last_stats["saturations"] == int(expected["saturated"].sum())
    table = golden_activation.build_table(golden_activation.silu, 0.05, 0.05)
    got = accelerator.requantize(acc, bias=bias, multiplier=multiplier, shift=shift,
                                 activation_table=table)
    assert np.array_equal(got, golden_activation.apply(table, expected["value"].astype(np.int8)))


def requant_case(rng, m, n, out_bits):
    """Accumulators of every magnitude, scales that put results on both sides of both clamps,
    extreme residuals and residual multipliers (0 and 65535 among them)."""
    bits = rng.integers(0, 32, (m, n))
    acc = (rng.integers(0, 1 << 31, (m, n)) >> (31 - bits)) * rng.choice([-1, 1], (m, n))
    acc.flat[:2] = [-(1 << 31), (1 << 31) - 1][:acc.size]
    residual = rng.integers(-128, 128, (m, n))
    residual.flat[:4] = [-128, 127, -128, 127][:residual.size]
    d = rng.integers(0, 1 << 16, n)
    d[:2] = [0, 0xFFFF][:n]
    acc = np.clip(acc, -(1 << 31) - residual * d[None], (1 << 31) - 1 - residual * d[None])
    # |y| ~ 2**(bits - s): from 0 to far beyond the clamps in every column.
    scale = np.exp2(-rng.uniform(10, 20, n) - (8 if out_bits == 8 else 0))
    multiplier, shift = quantize_multipliers(scale)
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    limit = 1 << (out_bits - 1)
    zero_point = rng.integers(-limit // 16, limit // 16, n)
    zero_point[:2] = [-limit, limit - 1][:n]
    return acc, residual, d, dict(bias=bias, multiplier=multiplier, shift=shift,
                                  zero_point=zero_point)


@pytest.mark.parametrize("m, n", [(1, 1), (5, 7), (19, 11), (70, 22)])
def test_requantize_int16_and_residual(accelerator, m, n):
    """REQUANT with ``wide`` (INT16 outputs), ``residual`` (INT8 rows from WGT times d per
    column), both, and a residual with INT8 outputs (plain and through the activation table),
    vs the golden models; ragged N (4 x 4 core: N not a multiple of the lanes)."""
    from sim.golden.int16_ops import requantize_int16, requantize_residual_int16
    rng = np.random.default_rng(60 + m + n)
    acc, residual, d, params = requant_case(rng, m, n, 16)
    p = {k: v[None] for k, v in params.items()}
    # INT16 outputs.
    expected = requantize_int16(acc, p["bias"], p["multiplier"], p["shift"], p["zero_point"])
    got = accelerator.requantize(acc, out_bits=16, **params)
    assert got.dtype == np.int16 and got.shape == (m, n)
    assert np.count_nonzero(got != expected["value"]) == 0
    assert accelerator.last_stats["saturations"] == int(expected["saturated"].sum())
    # INT16 outputs with a residual.
    expected = requantize_residual_int16(acc, residual, d[None], p["bias"], p["multiplier"],
                                         p["shift"], p["zero_point"])
    got = accelerator.requantize(acc, out_bits=16, residual=residual, residual_multiplier=d, **params)
    assert np.count_nonzero(got != expected["value"]) == 0
    assert accelerator.last_stats["saturations"] == int(expected["saturated"].sum())
    if m * n > 50:  # the case reaches both clamps and the values between
        values = expected["value"]
        assert values.min() == -32768 and values.max() == 32767
        assert np.count_nonzero(np.abs(values) > 128) > m * n // 10
    # INT8 outputs with a residual: the INT8 requantizer of acc + residual * d.
    acc8, residual8, d8, params8 = requant_case(rng, m, n, 8)
    p8 = {k: v[None] for k, v in params8.items()}
    expected8 = requantize(acc8 + residual8 * d8[None], p8["bias"], p8["multiplier"], p8["shift"],
                           p8["zero_point"])
    got = accelerator.requantize(acc8, residual=residual8, residual_multiplier=d8, **params8)
    assert got.dtype == np.int8
    assert np.count_nonzero(got != expected8["value"]) == 0
    assert accelerator.last_stats["saturations"] == int(expected8["saturated"].sum())
    table = golden_activation.build_table(golden_activation.gelu, 0.05, 0.05)
    got = accelerator.requantize(acc8, residual=residual8, residual_multiplier=d8,
                                 activation_table=table, **params8)
    assert np.array_equal(got, golden_activation.apply(table, expected8["value"].astype(np.int8)))


def test_requantize_residual_in_many_chunks(accelerator):
    """More rows than one INP half holds: the residual rows go through alternating WGT halves."""
    from sim.golden.int16_ops import requantize_residual_int16
    rng = np.random.default_rng(77)
    m, n = 700, 9   # 12 INT32 words per row: 341 rows per INP half (4,096 words)
    acc, residual, d, params = requant_case(rng, m, n, 16)
    p = {k: v[None] for k, v in params.items()}
    expected = requantize_residual_int16(acc, residual, d[None], p["bias"], p["multiplier"],
                                         p["shift"], p["zero_point"])
    got = accelerator.requantize(acc, out_bits=16, residual=residual, residual_multiplier=d, **params)
    assert np.count_nonzero(got != expected["value"]) == 0


@pytest.mark.parametrize("m, cls_rows, wide", [(300, 70, True), (40, 40, False), (9, 1, True)])
def test_requantize_row_classes(accelerator, m, cls_rows, wide):
    """Rows [0, cls_rows) with a second parameter set, in one program; 300 rows span several
    chunks and the class boundary falls inside one (with the residual, INT16 out)."""
    from sim.golden.int16_ops import requantize_residual_int16
    rng = np.random.default_rng(m + cls_rows)
    n, bits = 9, 16 if wide else 8
    acc, residual, d, params = requant_case(rng, m, n, bits)
    _, _, _, cls_params = requant_case(rng, m, n, bits)
    expected = np.empty((m, n), dtype=np.int64)
    for rows, p in ((slice(0, cls_rows), cls_params), (slice(cls_rows, m), params)):
        expected[rows] = requantize_residual_int16(
            acc[rows], residual[rows], d[None], *(p[k][None] for k in
                                                 ("bias", "multiplier", "shift", "zero_point")),
        )["value"]
    if not wide:
        expected = np.clip(expected, -128, 127)
    got = accelerator.requantize(acc, out_bits=bits, residual=residual, residual_multiplier=d,
                                 cls_rows=cls_rows, **params,
                                 **{f"cls_{k}": v for k, v in cls_params.items()})
    assert np.count_nonzero(got != expected) == 0
    assert np.count_nonzero(expected[:cls_rows] != requantize_residual_int16(
        acc[:cls_rows], residual[:cls_rows], d[None],
        *(params[k][None] for k in ("bias", "multiplier", "shift", "zero_point")))["value"])


def test_layernorm_row_classes(accelerator):
    """INT16 LayerNorm, rows [0, 70) with their own gamma, beta, gamma_frac and eps, in one
    program (a TABLE switches the parameters at row 70, inside the second chunk)."""
    rng = np.random.default_rng(70)
    m, n, cls_rows = 150, 16, 70
    x = np.rint(rng.normal(0, rng.uniform(10, 8000, (m, 1)), (m, n))).clip(-32768, 32767)
    x = x.astype(np.int16)
    sets = []
    for scale in (0.05, 0.5):
        gamma_q, beta_q, gamma_frac = golden_layernorm.quantize_params(
            rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), scale)
        sets.append((gamma_q, beta_q, gamma_frac,
                     golden_layernorm.quantize_eps(1e-5, rng.uniform(0.001, 0.01), n)))
    (g0, b0, f0, e0), (g1, b1, f1, e1) = sets
    got = accelerator.layernorm(x, g0, b0, f0, e0, in_bits=16, cls_rows=cls_rows, cls_gamma=g1,
                                cls_beta=b1, cls_gamma_frac=f1, cls_eps=e1)
    expected = np.concatenate([layernorm_int16(x[:cls_rows], g1, b1, f1, e1),
                               layernorm_int16(x[cls_rows:], g0, b0, f0, e0)])
    assert np.count_nonzero(got != expected) == 0
    assert np.count_nonzero(expected[:cls_rows] != layernorm_int16(x[:cls_rows], g0, b0, f0, e0))


def test_requantize_host_validation(accelerator):
    acc = np.zeros((2, 3), int)
    ok = dict(bias=0, multiplier=1 << 30, shift=0)
    for kwargs, match in [
        (dict(out_bits=12), "out_bits"),
        (dict(out_bits=16, activation_table=np.zeros(256, int)), "activation table"),
        (dict(residual=np.zeros((2, 3), int)), "together"),
        (dict(residual_multiplier=1), "together"),
        (dict(residual=np.zeros((3, 2), int), residual_multiplier=1), "shape"),
        (dict(residual=np.full((2, 3), 128), residual_multiplier=1), "INT8"),
        (dict(residual=np.zeros((2, 3), int), residual_multiplier=1 << 16), "residual_multiplier"),
        (dict(residual=np.zeros((2, 3), int), residual_multiplier=-1), "residual_multiplier"),
        (dict(residual=np.zeros((2, 3), int), residual_multiplier=[1, 2]), "residual_multiplier"),
        (dict(zero_point=128), "zero_point"),
        (dict(zero_point=1 << 15, out_bits=16), "zero_point"),
    ]:
        with pytest.raises(ValueError, match=match):
            accelerator.requantize(acc, **ok, **kwargs)
    with pytest.raises(ValueError, match="INT32"):
        accelerator.requantize(np.full((1, 1), (1 << 31) - 100), residual=[[1]],
                               residual_multiplier=100, **ok)
    assert accelerator.requantize(np.zeros((0, 3), int), out_bits=16, **ok).dtype == np.int16


@pytest.mark.parametrize("timing", [
    MemoryTiming(read_latency=1, write_latency=1),
    MemoryTiming(read_latency=200, write_latency=150, read_interval=3, write_interval=5),
], ids=["fast", "slow"])
def test_results_do_not_depend_on_memory_timing(timing):
    rng = np.random.default_rng(3)
    a, w = random_codes(rng, (40, 30), 0), random_codes(rng, (30, 22), 0)
    with SimTransport(CONFIG, timing=timing) as transport:
        accelerator = Accelerator(transport)
        assert np.array_equal(accelerator.matmul(a, w, 0), golden_matmul(a, w, 0))
        stats = accelerator.last_stats
    assert stats["load_wait_memory"] > 0


class RawProgram:
    """Encoded instructions as they are, for ``Accelerator.run``."""

    def __init__(self, program_bytes):
        self.program_bytes = program_bytes

    def to_bytes(self):
        return self.program_bytes


def run_error(accelerator, program_bytes):
    with pytest.raises(DeviceError) as info:
        accelerator.run(RawProgram(program_bytes))
    # The core recovers: an op right after the error is correct.
    a = np.arange(12).reshape(3, 4) % 7
    assert np.array_equal(accelerator.matmul(a, a.T, 0), golden_matmul(a, a.T, 0))
    return info.value


def one(opcode, **fields):
    """One encoded instruction; ``raw_<field>`` sets a field to a value its enum lacks."""
    raw = {name[4:]: fields.pop(name) for name in list(fields) if name.startswith("raw_")}
    word = encode(opcode, **fields)
    for name, value in raw.items():
        word |= value << GemmInstruction[name].offset
    return word.to_bytes(32, "little")


def test_unknown_opcode_is_an_error(accelerator):
    error = run_error(accelerator, (15).to_bytes(32, "little"))
    assert error.code == ErrorCode.UNKNOWN_OPCODE and error.unit == 0


@pytest.mark.parametrize("opcode, fields, unit", [
    (Opcode.LOAD, dict(bank=Bank.INP, sram_base=INP_WORDS - 6, sram_stride=1, rows=7, cols=1), 1),
    (Opcode.LOAD, dict(bank=Bank.WGT, sram_base=0, sram_stride=0, rows=2, cols=1,
                       dram_base=CONFIG.dram_words // 2, dram_stride=CONFIG.dram_words // 2), 1),
    (Opcode.LOAD, dict(bank=Bank.WGT, rows=2, cols=1, dram_base=CONFIG.dram_words - 1,
                       dram_stride=1), 1),
    (Opcode.STORE, dict(bank=Bank.OUT, sram_base=0, sram_stride=OUT_WORDS, rows=2, cols=1), 3),
    (Opcode.STORE, dict(bank=Bank.COUNTERS, sram_base=10, rows=1, cols=10), 3),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, a_base=INP_WORDS - 1, a_stride=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, w_base=WGT_WORDS - 96, w_stride=40), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, transpose_w=1, w_base=WGT_WORDS - 96,
                       w_stride=30), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT,
                       param_base=WGT_WORDS - 6), 2),
    # GEMM results go to out_bank INP (0) unless told otherwise.
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, out_base=INP_WORDS - 2), 2),
    # Class-1 parameters: 2 tiles x 10 words from WGT - 16 end at WGT + 4 (normal ones fit).
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, post=PostOp.REQUANT, param_base=0,
                       cls_rows=1, cls_param_base=WGT_WORDS - 16), 2),
    # 13-word sets with ``wide``: 2 tiles from WGT - 24 end at WGT + 2 (10-word ones would fit).
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, post=PostOp.REQUANT, wide=1,
                       param_base=WGT_WORDS - 24), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, post=PostOp.REQUANT, residual=1, param_base=0,
                       cls_rows=1, cls_param_base=WGT_WORDS - 24, res_base=100, res_stride=2), 2),
    # Residual rows: 4 rows of 2 tiles at stride 3 from WGT - 10 end at WGT + 1.
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, post=PostOp.REQUANT, residual=1, param_base=0,
                       res_base=WGT_WORDS - 10, res_stride=3), 2),
    # INT16 results take 2 words per tile: 4 rows of 4 from INP - 12 end at INP + 4.
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, post=PostOp.REQUANT, wide=1, param_base=0,
                       out_base=INP_WORDS - 12, out_stride=4), 2),
    (Opcode.TABLE, dict(base=WGT_WORDS - 6, count=256), 2),
    (Opcode.SOFTMAX, dict(rows=2, words=3, src_base=INP_WORDS - 2, src_stride=3, dst_base=0), 2),
    (Opcode.LAYERNORM, dict(rows=3, words=4, dst_bank=Bank.OUT, dst_base=OUT_WORDS - 6,
                            dst_stride=4), 2),
    # INT16 rows take 2 x words INP words: INP - 6 + 8 > INP (INP - 6 + 4 would fit).
    (Opcode.LAYERNORM, dict(rows=1, words=4, wide=1, dst_bank=Bank.OUT,
                            src_base=INP_WORDS - 6), 2),
    (Opcode.REQUANT, dict(rows=1, words=1, src_base=INP_WORDS - 3, param_base=0), 2),
    (Opcode.REQUANT, dict(rows=1, words=2, param_base=WGT_WORDS - 16), 2),
    (Opcode.REQUANT, dict(rows=1, words=2, wide=1, param_base=WGT_WORDS - 12), 2),  # 13: +1
    (Opcode.REQUANT, dict(rows=1, words=1, residual=1, param_base=WGT_WORDS - 11), 2),  # +2
    (Opcode.REQUANT, dict(rows=2, words=1, residual=1, res_base=WGT_WORDS - 1, res_stride=1), 2),
    (Opcode.REQUANT, dict(rows=3, words=4, wide=1, residual=1, res_base=WGT_WORDS - 96,
                          res_stride=48), 2),
], ids=["load-sram", "load-dram-stride", "load-dram-end", "store-sram", "store-counters",
        "gemm-a", "gemm-w", "gemm-wt", "gemm-params", "gemm-out", "gemm-cls-params",
        "gemm-wide-params", "gemm-residual-cls-params", "gemm-residual", "gemm-wide-out",
        "table", "softmax-src",
        "layernorm-dst", "layernorm-wide-src", "requant-src", "requant-params", "requant-wide-params",
        "requant-residual-params", "requant-residual", "requant-residual-stride"])
def test_out_of_range_addresses_are_errors(accelerator, opcode, fields, unit):
    error = run_error(accelerator, one(opcode, **fields))
    assert (error.code, error.unit) == (ErrorCode.ADDRESS, unit)


D_WORDS = CONFIG.dram_words


@pytest.mark.parametrize("opcode, fits, one_past, unit", [
    (Opcode.LOAD, dict(bank=Bank.INP, sram_base=INP_WORDS - 6, sram_stride=1, rows=6, cols=1),
     dict(rows=7), 1),
    (Opcode.LOAD, dict(bank=Bank.WGT, rows=2, cols=1, dram_base=D_WORDS // 2,
                       dram_stride=D_WORDS // 2 - 1), dict(dram_stride=D_WORDS // 2), 1),
    (Opcode.LOAD, dict(bank=Bank.WGT, rows=1, cols=2, dram_base=D_WORDS - 2),
     dict(dram_base=D_WORDS - 1), 1),
    (Opcode.STORE, dict(bank=Bank.OUT, sram_base=0, sram_stride=OUT_WORDS - 1, rows=2, cols=1),
     dict(sram_stride=OUT_WORDS), 3),
    (Opcode.GEMM, dict(m=4, k_tiles=2, n_tiles=1, a_base=INP_WORDS - 5, a_stride=1),
     dict(a_base=INP_WORDS - 4), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=2, out_base=INP_WORDS - 8, a_base=0),
     dict(out_base=INP_WORDS - 7), 2),
    (Opcode.SOFTMAX, dict(rows=2, words=3, src_base=INP_WORDS - 6, src_stride=3, dst_base=0),
     dict(src_base=INP_WORDS - 5), 2),
    (Opcode.LAYERNORM, dict(rows=3, words=4, dst_bank=Bank.OUT, dst_base=OUT_WORDS - 12,
                            dst_stride=4), dict(dst_base=OUT_WORDS - 11), 2),
    (Opcode.REQUANT, dict(rows=1, words=1, src_base=INP_WORDS - 4, param_base=0),
     dict(src_base=INP_WORDS - 3), 2),
    # 256 entries of 32 bits, lanes // 4 to a word.
    (Opcode.TABLE, dict(target=TableTarget.ACTIVATION, count=256,
                        base=WGT_WORDS - 256 // (CONFIG.lanes // 4)),
     dict(base=WGT_WORDS - 256 // (CONFIG.lanes // 4) + 1), 2),
], ids=["load-sram", "load-dram-stride", "load-dram-end", "store-sram", "gemm-a", "gemm-out",
        "softmax-src", "layernorm-dst", "requant-src", "table"])
def test_operands_ending_at_the_buffer_end_fit(accelerator, opcode, fits, one_past, unit):
    """The last word of a buffer (or of external memory) is usable; one word more is
    ADDRESS: each extent's bound is exact, not just somewhere past the end."""
    accelerator.run(RawProgram(one(opcode, **fits)))
    error = run_error(accelerator, one(opcode, **{**fits, **one_past}))
    assert (error.code, error.unit) == (ErrorCode.ADDRESS, unit)


@pytest.mark.parametrize("opcode, fields, unit", [
    (Opcode.LOAD, dict(bank=Bank.OUT, rows=1, cols=1), 1),
    (Opcode.STORE, dict(bank=Bank.INP, rows=1, cols=1), 3),
    (Opcode.GEMM, dict(m=0, k_tiles=1, n_tiles=1), 2),
    (Opcode.GEMM, dict(m=129, k_tiles=1, n_tiles=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=0, n_tiles=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=0), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, raw_mode=6), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, raw_post=3), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, out_bank=Bank.COUNTERS), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT, cls_rows=4), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT, cls_rows=9), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.RAW, cls_rows=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.RAW, wide=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.RAW, residual=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT_ACT, wide=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.CONVERT), 2),     # INT8 mode
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, mode=MatmulMode.UINT8, post=PostOp.CONVERT), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, mode=MatmulMode.E4M3, post=PostOp.CONVERT,
                       wide=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, mode=MatmulMode.E4M3, post=PostOp.CONVERT,
                       residual=1), 2),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, mode=MatmulMode.E4M3, post=PostOp.CONVERT,
                       raw_target=3), 2),
    (Opcode.SOFTMAX, dict(rows=1, words=33), 2),                 # 132 > max_length 128
    (Opcode.SOFTMAX, dict(rows=1, words=2, length=9), 2),        # length beyond the row
    (Opcode.LAYERNORM, dict(rows=1, words=CONFIG.max_hidden // CONFIG.lanes + 1), 2),  # > max_hidden
    (Opcode.ACTIVATION, dict(rows=0, words=1), 2),
    (Opcode.ACTIVATION, dict(rows=1, words=1, dst_bank=Bank.COUNTERS), 2),
    (Opcode.TABLE, dict(target=TableTarget.ACTIVATION, count=257), 2),
    (Opcode.TABLE, dict(target=TableTarget.LAYERNORM, count=3), 2),
    (Opcode.TABLE, dict(target=TableTarget.SOFTMAX, count=0), 2),
    (Opcode.SOFTMAX, dict(rows=1, words=1, length=4, wide=1), 2),
    (Opcode.SOFTMAX, dict(rows=1, words=1, length=4, residual=1), 2),
    (Opcode.ACTIVATION, dict(rows=1, words=1, wide=1), 2),
    (Opcode.ACTIVATION, dict(rows=1, words=1, residual=1), 2),
    (Opcode.LAYERNORM, dict(rows=1, words=1, residual=1), 2),
    (Opcode.REQUANT, dict(rows=1, words=2, wide=1, activate=1), 2),   # no table for INT16
    (Opcode.REQUANT, dict(rows=1, words=3, wide=1), 2),               # 2 words per tile
], ids=["load-out", "store-inp", "m0", "m-max", "k0", "n0", "mode6", "post3", "out-counters",
        "cls-rows-m", "cls-rows-beyond", "cls-raw", "wide-raw", "residual-raw", "wide-act",
        "convert-int8", "convert-uint8", "convert-wide", "convert-residual", "convert-target3",
        "softmax-long", "softmax-length", "layernorm-long", "rows0", "dst-counters",
        "table-count", "table-odd", "table-empty", "softmax-wide", "softmax-residual",
        "activation-wide", "activation-residual", "layernorm-residual", "requant-wide-activate",
        "requant-wide-odd"])
def test_bad_fields_are_errors(accelerator, opcode, fields, unit):
    error = run_error(accelerator, one(opcode, **fields))
    assert (error.code, error.unit) == (ErrorCode.BAD_FIELD, unit)


def test_bad_requantization_shift_is_an_error(accelerator):
    with pytest.raises(ValueError, match="shift"):
        accelerator.linear(np.zeros((2, 2), int), np.zeros((2, 2), int), bias=0,
                           multiplier=1 << 30, shift=31)


def test_deadlocked_program_is_reported(accelerator):
    # A GEMM that waits for a load token nothing pushes.
    error = run_error(accelerator, one(Opcode.GEMM, pop_prev=True, m=1, k_tiles=1, n_tiles=1))
    assert "deadlocked" in str(error)


def test_store_of_the_counter_file_and_registers(accelerator):
    transport = accelerator.transport
    program = Program()
    program.store(bank=Bank.COUNTERS, sram_base=0, sram_stride=0, rows=1, cols=len(Counter),
                  dram_base=1000, dram_stride=0)
    accelerator.run(program)
    words = np.frombuffer(transport.read_memory(1000, len(Counter)), dtype="<u4")
    registers = [transport.read_register(COUNTER_BASE + c) for c in Counter]
    # Counters move while the store runs; the stored snapshot is never ahead of the registers.
    assert all(w <= r for w, r in zip(words, registers))
    assert words[Counter.INSTRUCTIONS] >= 1 and words[Counter.CYCLES] > 0
    assert transport.read_register(Register.LANES) == 4
    assert transport.read_register(Register.STATUS) & 1       # idle
    sync = encode(Opcode.SYNC).to_bytes(32, "little")
    before = transport.read_register(COUNTER_BASE + Counter.SYNCS)
    transport.push_instructions(sync * 3)
    transport.run(10_000)
    assert transport.read_register(COUNTER_BASE + Counter.SYNCS) == before + 3


def test_host_side_validation(accelerator):
    with pytest.raises(ValueError, match="inner dimensions"):
        accelerator.matmul(np.zeros((2, 3), int), np.zeros((4, 2), int), 0)
    with pytest.raises(ValueError, match="8-bit codes"):
        accelerator.matmul(np.full((2, 2), 256), np.zeros((2, 2), int), 0)
    with pytest.raises(ValueError, match="2-D"):
        accelerator.matmul(np.zeros(3, int), np.zeros((3, 2), int), 0)
    with pytest.raises(ValueError, match="too large for the weight buffer"):
        accelerator.matmul(np.zeros((1, WGT_WORDS + 1), int), np.zeros((WGT_WORDS + 1, 1), int), 0)


@pytest.mark.parametrize("t, d, length, causal", [
    (37, 8, 30, False), (16, 6, None, True), (64, 32, 50, False), (60, 12, 60, True)])
def test_attention_head_program(accelerator, t, d, length, causal):
    """Q K^T (through the weight transposer), requantize, softmax, P V (UINT8 x INT8),
    requantize: one program, every intermediate on chip, vs the composed golden models."""
    from sim.golden.attention import attention_head
    from sim.golden.requantizer import quantize_multiplier
    rng = np.random.default_rng(t + d)
    q, k, v = (random_codes(rng, (t, d), 0).astype(np.uint8).view(np.int8) for _ in range(3))
    score_m, score_s = quantize_multiplier(0.5 / (128 * np.sqrt(d)))
    out_m, out_s = quantize_multiplier(0.9 / 256)
    kwargs = dict(score_params=dict(bias=0, multiplier=score_m, shift=score_s),
                  softmax_table=golden_softmax.exp_table(0.08),
                  out_params=dict(bias=3, multiplier=out_m, shift=out_s),
                  length=length, causal=causal)
    got = accelerator.attention_head(q, k, v, **kwargs)
    expected = attention_head(q, k, v, **kwargs)
    assert np.array_equal(got, expected)
    assert np.count_nonzero(expected) > expected.size // 4   # not a trivially zero case


def test_attention_heads_in_one_program(accelerator):
    """Seven heads of different T, d, lengths and tables in one program (double-buffered
    halves, tables shared by consecutive heads and loaded ahead into two slots): each equals
    the golden head, and the counters count every head's MACs."""
    from jalapeno.accelerator import AttentionHead
    from sim.golden.attention import attention_head
    from sim.golden.requantizer import quantize_multiplier, quantize_multipliers
    rng = np.random.default_rng(77)
    tables = [golden_softmax.exp_table(s) for s in (0.05, 0.08, 0.12)]
    shapes = [(9, 8, None, 0), (12, 8, 7, 0), (5, 12, None, 1), (17, 8, 17, 0),
              (1, 4, None, 0), (30, 16, 20, 1), (4, 8, 4, 2)]
    heads = []
    for t, d, length, table in shapes:
        q, k, v = (random_codes(rng, (t, d), 0).astype(np.uint8).view(np.int8) for _ in range(3))
        score_m, score_s = quantize_multiplier(0.5 / (128 * np.sqrt(d)))
        out_m, out_s = quantize_multipliers(rng.uniform(0.5, 1.5, d) / 256)
        heads.append(AttentionHead(q, k, v, score_params=dict(bias=0, multiplier=score_m,
                                                              shift=score_s),
                                   softmax_table=tables[table],
                                   out_params=dict(bias=rng.integers(-5, 5, d),
                                                   multiplier=out_m, shift=out_s),
                                   length=length, causal=table == 1))
    got = accelerator.attention_heads(heads)
    assert len(got) == len(heads)
    for head, out in zip(heads, got):
        expected = attention_head(head.q, head.k, head.v, score_params=head.score_params,
                                  softmax_table=head.softmax_table, out_params=head.out_params,
                                  length=head.length, causal=head.causal)
        assert np.array_equal(out, expected)
    assert sum(np.count_nonzero(o) for o in got) > sum(o.size for o in got) // 4
    assert accelerator.last_stats["useful_macs"] == sum(2 * t * t * d for t, d, *_ in shapes)
    assert accelerator.attention_heads([]) == []


def test_attention_head_too_large_for_the_buffers_is_a_clear_error(accelerator):
    x = np.zeros((128, 4), dtype=np.int8)   # Q, S and P: 128 + 2 x 128 x 32 INP words
    assert 128 + 2 * 128 * 32 > INP_WORDS
    with pytest.raises(ValueError, match="does not fit the on-chip buffers"):
        accelerator.attention_head(x, x, x, score_params=dict(bias=0, multiplier=1 << 30, shift=0),
                                   softmax_table=golden_softmax.exp_table(0.1),
                                   out_params=dict(bias=0, multiplier=1 << 30, shift=0))


# -- A core built without the row-wise units, the requantizers and the scheduler (FPGA) ------
# ... and with the ULX3S core's timing options: registered PE multipliers (their Amaranth
# implementation), the accumulator's, the range checks', the array broadcasts', the buffer
# read addresses' and the counters' extra stages (the result rows through the engine's
# output buffer, under the store's backpressure).

GEMM_ONLY = dataclasses.replace(PRESETS["small"], fp8=False, vector_units=False,
                                requantizer=False, scheduler=False, pe_multiplier="behavioral",
                                accumulator_stage=True, range_check_stage=True,
                                broadcast_stage=True, read_stage=True,
                                counter_stage=True)


@pytest.fixture(scope="module")
def gemm_only():
    with SimTransport(GEMM_ONLY) as transport:
        yield Accelerator(transport)


def test_gemm_only_core_reports_what_it_has(gemm_only):
    assert gemm_only.transport.read_register(Register.CONFIG) == 0
    assert not (gemm_only.fp8 or gemm_only.vector_units or gemm_only.requantizer
                or gemm_only.scheduler)
    rng = np.random.default_rng(7)
    lanes = GEMM_ONLY.lanes
    for mode in (MatmulMode.INT8, MatmulMode.UINT8):     # its integer-only engine
        a, w = random_codes(rng, (13, 40), mode), random_codes(rng, (40, 9), mode)
        assert np.array_equal(gemm_only.matmul(a, w, mode), golden_matmul(a, w, mode))
        # the counters count through their stage: every A row of every pass entered the
        # array once (13 rows, 40 / lanes K tiles, 9 / lanes N tiles rounded up)
        stats = gemm_only.last_stats
        assert stats["mac_cycles"] == 13 * -(-40 // lanes) * -(-9 // lanes)
        assert stats["cycles"] > stats["mac_cycles"] and stats["instructions"] > 0


@pytest.mark.parametrize("call, message", [
    (lambda acc: acc.linear(np.zeros((2, 4), int), np.zeros((4, 4), int), bias=0,
                            multiplier=1 << 30, shift=0), "requantizers"),
    (lambda acc: acc.softmax(np.zeros((2, 4), int), np.zeros(256, int)), "softmax"),
    (lambda acc: acc.layernorm(np.zeros((2, 4), int), np.ones(4, int), np.zeros(4, int), 0, 0),
     "LayerNorm"),
    (lambda acc: acc.activation(np.zeros((2, 4), int), np.zeros(256, int)), "activation"),
])
def test_gemm_only_core_refuses_ops_on_the_host(gemm_only, call, message):
    with pytest.raises(ValueError, match=f"{message}.*built without"):
        call(gemm_only)


@pytest.mark.parametrize("opcode, fields", [
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT)),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.REQUANT_ACT)),
    (Opcode.GEMM, dict(m=4, k_tiles=1, n_tiles=1, post=PostOp.CONVERT, mode=MatmulMode.E4M3)),
    (Opcode.REQUANT, dict(rows=1, words=1)),
    (Opcode.SOFTMAX, dict(rows=1, words=1, length=4)),
    (Opcode.LAYERNORM, dict(rows=1, words=1)),
    (Opcode.ACTIVATION, dict(rows=1, words=1)),
    (Opcode.TABLE, dict(target=TableTarget.ACTIVATION, base=0, count=4)),
], ids=["gemm-requant", "gemm-requant-act", "gemm-convert", "requant", "softmax", "layernorm", "activation",
        "table"])
def test_gemm_only_core_rejects_what_it_lacks(gemm_only, opcode, fields):
    error = run_error(gemm_only, one(opcode, **fields))
    assert (error.code, error.unit) == (ErrorCode.BAD_FIELD, 2)
