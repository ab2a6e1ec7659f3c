"""Random and edge-case LayerNorm/RMSNorm problems, shared by tests/test_layernorm.py,
the cocotb bench and sim/layernorm_metrics.py.

A problem is a dict: ``x`` (rows x N INT8 codes, or INT16 with ``input_bits=16``),
``input_scale``, float ``gamma``, ``beta``, ``eps``, ``output_scale``,
``output_zero_point``, ``rms``, plus the host quantization (``gamma_q``, ``beta_q``,
``gamma_frac``, ``eps_q``) and ``expected`` (the golden output codes:
:func:`sim.golden.layernorm.layernorm`, or :func:`sim.golden.int16_ops.layernorm_int16`
for INT16 rows). :func:`int_problem` takes the integer parameters directly.
"""

import numpy as np

from sim.golden import layernorm as golden
from sim.golden.int16_ops import INT16_MAX, INT16_MIN, layernorm_int16


__all__ = ["make_problem", "int_problem", "random_rows", "edge_problems", "random_rows16",
           "edge_problems16"]


def _golden(input_bits):
    return {8: golden.layernorm, 16: layernorm_int16}[input_bits]


def int_problem(x, gamma_q, beta_q, gamma_frac, eps_q, *, rms=False, input_bits=16):
    """A problem from integer parameters (for field extremes that quantize_params never picks)."""
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[1]
    gamma_q = np.broadcast_to(np.asarray(gamma_q, dtype=np.int64), (n,)).copy()
    beta_q = np.broadcast_to(np.asarray(beta_q, dtype=np.int64), (n,)).copy()
    expected = _golden(input_bits)(x, gamma_q, beta_q, gamma_frac, eps_q, rms)
    return dict(x=x, rms=rms, gamma_q=gamma_q, beta_q=beta_q, gamma_frac=gamma_frac, eps_q=eps_q,
                expected=expected)


def make_problem(x, *, input_scale=0.05, gamma=None, beta=None, eps=1e-12, output_scale=None,
                 output_zero_point=0, rms=False, rng=None, input_bits=8):
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[1]
    rng = np.random.default_rng(0) if rng is None else rng
    if gamma is None:
        gamma = rng.normal(1.0, 0.3, n)
    if beta is None:
        beta = np.zeros(n) if rms else rng.normal(0.0, 0.5, n)
    if rms:
        beta = np.zeros(n)
    if output_scale is None:
        output_scale = 4.0 / 127  # outputs within about +-4 use the whole INT8 range
    gamma_q, beta_q, gamma_frac = golden.quantize_params(gamma, beta, output_scale, output_zero_point)
    eps_q = golden.quantize_eps(eps, input_scale, n)
    expected = _golden(input_bits)(x, gamma_q, beta_q, gamma_frac, eps_q, rms)
    return dict(x=x, input_scale=input_scale, gamma=np.asarray(gamma, float), beta=np.asarray(beta, float),
                eps=eps, output_scale=output_scale, output_zero_point=output_zero_point, rms=rms,
                gamma_q=gamma_q, beta_q=beta_q, gamma_frac=gamma_frac, eps_q=eps_q, expected=expected)


def random_rows(rng, rows, n):
    """Rows with a random mean and a log-uniform spread (std from 0.3 to 60 codes)."""
    mean = rng.uniform(-40, 40, (rows, 1))
    std = np.exp(rng.uniform(np.log(0.3), np.log(60), (rows, 1)))
    x = np.rint(rng.normal(mean, std, (rows, n)))
    # Some rows with outliers, as residual streams have.
    outliers = rng.random((rows, n)) < 0.005
    x = np.where(outliers, rng.integers(-128, 128, (rows, n)), x)
    return np.clip(x, -128, 127).astype(np.int64)


def edge_problems(n, rng):
    """Constant rows (variance 0), huge and tiny variance, extreme gamma/beta, both modes."""
    problems = []
    const = np.array([np.full(n, v) for v in (-128, -1, 0, 1, 127)])
    problems.append(make_problem(const, rng=rng))
    problems.append(make_problem(const, eps=1e-3, rng=rng, rms=True))
    huge = np.where(np.arange(n) % 2 == 0, 127, -128)[None, :]
    huge = np.concatenate([huge, np.where(rng.random((2, n)) < 0.5, 127, -128)])
    problems.append(make_problem(huge, rng=rng))
    problems.append(make_problem(huge, rng=rng, rms=True))
    tiny = np.zeros((3, n), dtype=np.int64)
    tiny[0, 0] = 1
    tiny[1, n // 2] = -1
    tiny[2] = 100
    tiny[2, -1] = 101
    problems.append(make_problem(tiny, rng=rng))
    problems.append(make_problem(tiny, eps=1e-2, input_scale=0.01, rng=rng))
    problems.append(make_problem(tiny[:2], rng=rng, rms=True))
    # Extreme gamma and beta: the largest magnitudes the fields take, both signs.
    x = random_rows(rng, 3, n)
    gamma = np.where(rng.random(n) < 0.5, -1.0, 1.0) * 4.0
    beta = np.where(rng.random(n) < 0.5, -1.0, 1.0) * 15.0
    problems.append(make_problem(x, gamma=gamma, beta=beta, output_scale=1 / 127, rng=rng))
    gamma_small = rng.normal(0, 1e-3, n)
    problems.append(make_problem(x, gamma=gamma_small, beta=beta / 100, output_zero_point=-100,
                                 output_scale=0.01, rng=rng))
    return problems


def random_rows16(rng, rows, n):
    """INT16 rows like BERT's pre-LayerNorm residual sums: a random mean and a log-uniform
    spread (std from 1 to 8,000 codes), 0.5% outliers anywhere in the INT16 range, and in
    every third row one channel at +-32767 (a residual outlier dimension)."""
    mean = rng.uniform(-2000, 2000, (rows, 1))
    std = np.exp(rng.uniform(0, np.log(8000), (rows, 1)))
    x = np.rint(rng.normal(mean, std, (rows, n)))
    outliers = rng.random((rows, n)) < 0.005
    x = np.where(outliers, rng.integers(INT16_MIN, INT16_MAX + 1, (rows, n)), x)
    for r in range(0, rows, 3):
        x[r, rng.integers(n)] = rng.choice([INT16_MIN + 1, INT16_MAX])
    return np.clip(x, INT16_MIN, INT16_MAX).astype(np.int64)


def edge_problems16(n, rng):
    """INT16 edge cases at N = n: constant rows (all -32768, all 32767: variance 0, eps
    only, and the largest RMSNorm mean square), the largest variance, a single outlier
    among zeros or small values (the BERT case), tiny variance, an eps that dominates,
    and the extremes of gamma, beta and gamma_frac, in both modes."""
    p16 = dict(input_bits=16, input_scale=0.002)
    problems = []
    const = np.array([np.full(n, v) for v in (INT16_MIN, -1, 0, 1, 12345, INT16_MAX)])
    problems.append(make_problem(const, rng=rng, **p16))
    problems.append(make_problem(const, eps=1e-3, rng=rng, **p16))
    problems.append(make_problem(const, eps=1e-3, rng=rng, rms=True, **p16))
    problems.append(make_problem(const[[0, 5]], rng=rng, rms=True, **p16))
    huge = np.where(np.arange(n) % 2 == 0, INT16_MAX, INT16_MIN)[None, :]
    huge = np.concatenate([huge, np.where(rng.random((2, n)) < 0.5, INT16_MAX, INT16_MIN)])
    problems.append(make_problem(huge, rng=rng, **p16))
    problems.append(make_problem(huge, rng=rng, rms=True, **p16))
    outlier = np.zeros((6, n), dtype=np.int64)
    outlier[0, 0] = INT16_MAX
    outlier[1, n - 1] = INT16_MIN
    outlier[2, n // 2] = INT16_MAX
    outlier[3:] = rng.integers(-20, 21, (3, n))
    outlier[3, rng.integers(n)] = INT16_MAX
    outlier[4, rng.integers(n)] = INT16_MIN
    outlier[5, :] += 3000
    outlier[5, rng.integers(n)] = INT16_MAX
    problems.append(make_problem(outlier, rng=rng, **p16))
    problems.append(make_problem(outlier, rng=rng, rms=True, **p16))
    tiny = np.zeros((3, n), dtype=np.int64)
    tiny[0, 0] = 1
    tiny[1] = 30000
    tiny[1, -1] = 30001
    tiny[2] = INT16_MIN
    tiny[2, n // 2] = INT16_MIN + 1
    problems.append(make_problem(tiny, rng=rng, **p16))
    problems.append(make_problem(tiny, eps=1e-2, input_scale=0.01, rng=rng, input_bits=16))
    x = random_rows16(rng, 3, n)
    # eps dominating: the largest eps field.
    problems.append(int_problem(x, rng.integers(-(1 << 17) + 1, 1 << 17, n), 0, 12,
                                (1 << 40) - 1))
    # gamma_frac 0 and 20 with the largest gamma and beta magnitudes, both signs.
    sign = np.where(rng.random(n) < 0.5, -1, 1)
    for gf in (0, 20):
        problems.append(int_problem(x, sign * ((1 << 17) - 1), -sign * ((1 << 23) - 1), gf, 0))
        g_max = 100 if gf == 0 else (1 << 17) - 1   # gf = 0: outputs still inside INT8
        for rms in (False, True):
            problems.append(int_problem(x, rng.integers(-g_max, g_max + 1, n),
                                        rng.integers(-(1 << 19), 1 << 19, n), gf, 1, rms=rms))
    return problems
