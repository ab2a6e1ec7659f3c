"""Random and edge-case LayerNorm/RMSNorm problems, shared by tests/test_layernorm.py,
the cocotb bench and sim/layernorm_metrics.py.

A problem is a dict: ``x`` (rows x N INT8 codes), ``input_scale``, float ``gamma``,
``beta``, ``eps``, ``output_scale``, ``output_zero_point``, ``rms``, plus the host
quantization (``gamma_q``, ``beta_q``, ``gamma_frac``, ``eps_q``) and ``expected``
(the golden output codes).
"""

import numpy as np

from sim.golden import layernorm as golden


__all__ = ["make_problem", "random_rows", "edge_problems"]


def make_problem(x, *, input_scale=0.05, gamma=None, beta=None, eps=1e-12, output_scale=None,
                 output_zero_point=0, rms=False, rng=None):
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
    expected = golden.layernorm(x, gamma_q, beta_q, gamma_frac, eps_q, rms)
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
