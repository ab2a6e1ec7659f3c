"""Golden model of the LayerNorm/RMSNorm unit (``rtl/layernorm.py``), host quantization
of its parameters, and float64 references.

Bit-exact integer model (per row of N INT8 codes x, per-channel gamma ``g`` and beta
``b``; all arithmetic exact in integers, floors are arithmetic right shifts)::

    S1 = sum(x)                S2 = sum(x * x)
    D  = N * S2 - S1**2        (LayerNorm: N**2 * variance, in code units**2)
    D  = N * S2                (RMSNorm:   N**2 * mean square)
    V  = D * 2**8 + E          (E: eps in units of 2**-8 code**2 / N**2, see quantize_eps)
    y, k = rsqrt_fixed(V)      (1 / sqrt(V) ~= y * 2**-(18 + k))
    u  = N * x - S1            (RMSNorm: N * x)
    z  = (u * y) >> max(k - 4, 0)                    normalized value, Q18
    q  = (z * g + (b << (6 + gf)) + 2**(17 + gf)) >> (18 + gf)
    out = clamp(q, -128, 127)

so ``z * 2**-18 ~= u / sqrt(D + E / 2**8) = (x - mean) / sqrt(var + eps)``, and the
output is rounded once, to nearest with ties toward +infinity (round half up, as the
requantizer), then saturated. ``g`` (signed 18 bits, ``gf`` fraction bits) and ``b``
(signed 24 bits, 12 fraction bits) already hold the output scale and zero point:
``g = gamma / s_out``, ``b = beta / s_out + zp_out`` (:func:`quantize_params`).

:func:`rsqrt_fixed` is the divider-free reciprocal square root: ``V = m * 4**k`` with
``m`` in [1, 4) (22 fraction bits, truncated), a 64-entry table (32 intervals of [1, 2)
and 32 of [2, 4), each entry the value that balances the relative error at the ends)
and one Newton-Raphson step ``y1 = y0 * (3 - m * y0**2) / 2`` in fixed point.
Measured max relative error: :data:`RSQRT_MAX_REL_ERR` (from :func:`measure_rsqrt_error`).
"""


import numpy as np

from rtl.layernorm import (BETA_FRAC, EPS_FRAC, GAMMA_BITS, GAMMA_FRAC_MAX, BETA_BITS, EPS_BITS,
                           M_FRAC, Y_FRAC, rsqrt_table)


__all__ = ["rsqrt_fixed", "measure_rsqrt_error", "layernorm", "quantize_params", "quantize_eps",
           "reference_layernorm", "reference_codes", "RSQRT_MAX_REL_ERR"]


#: Relative error bound of rsqrt_fixed (9.34e-5 measured by
#: :func:`measure_rsqrt_error`; checked by tests/test_layernorm.py).
RSQRT_MAX_REL_ERR = 1.0e-4

_TABLE = np.array(rsqrt_table(), dtype=np.int64)


def _msb(v):
    """Index of the highest set bit of each positive integer (< 2**53); -1 for 0."""
    v = np.asarray(v, dtype=np.int64)
    _, e = np.frexp(v.astype(np.float64))
    return np.where(v > 0, e - 1, -1)


def rsqrt_fixed(v):
    """``(y, k)`` with ``1 / sqrt(v) ~= y * 2**-(18 + k)``, bit-exact with the RTL.

    ``v``: integers in [0, 2**44). ``y`` is unsigned Q18 in (0.5, 1]; ``k`` is
    ``floor(log2(v) / 2)``. ``v = 0`` gives ``(0, 0)``.
    """
    v = np.asarray(v, dtype=np.int64)
    if v.size and (v.min() < 0 or v.max() >= 1 << 44):
        raise ValueError("v must lie in [0, 2**44)")
    k = np.maximum(_msb(v), 0) // 2
    left = np.maximum(M_FRAC - 2 * k, 0)
    right = np.maximum(2 * k - M_FRAC, 0)
    m = (v << left) >> right  # Q22 in [2**22, 2**24); exact or truncated
    high = m >= (2 << M_FRAC)
    index = np.where(high, 32 + ((m >> (M_FRAC - 4)) & 31), (m >> (M_FRAC - 5)) & 31)
    y0 = _TABLE[index]
    t1 = (y0 * y0) >> 12  # y0**2, Q24
    t2 = (m * t1) >> M_FRAC  # m * y0**2, Q24
    t3 = (3 << 24) - t2  # Q24
    y1 = (y0 * t3) >> 25  # y0 * t3 / 2, Q18
    y1 = np.where(v == 0, 0, y1)
    return y1, np.where(v == 0, 0, k)


def measure_rsqrt_error(samples_per_interval=2000, seed=0):
    """Max relative error of rsqrt_fixed against float64 over both octaves of m, every
    table interval (with its ends) and several exponents k; returns a float."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for k in (11, 14, 20):  # k >= 11: m keeps all 22 fraction bits; 20: truncation too
        base = 1 << (2 * k)
        lo, hi = base, 4 * base
        edges = np.linspace(lo, hi, 97).astype(np.int64)
        v = np.concatenate([rng.integers(lo, hi, 64 * samples_per_interval), edges[:-1],
                            edges[:-1] - 1, edges[:-1] + 1, [lo, hi - 1]])
        v = v[(v >= 1) & (v < 1 << 44)]
        y, kk = rsqrt_fixed(v)
        approx = y.astype(np.float64) * np.exp2(-(Y_FRAC + kk).astype(np.float64))
        exact = 1.0 / np.sqrt(v.astype(np.float64))
        worst = max(worst, float(np.max(np.abs(approx / exact - 1.0))))
    # Small v: every value below 2**16 exactly.
    v = np.arange(1, 1 << 16)
    y, kk = rsqrt_fixed(v)
    approx = y * np.exp2(-(Y_FRAC + kk).astype(np.float64))
    worst = max(worst, float(np.max(np.abs(approx * np.sqrt(v) - 1.0))))
    return worst


def layernorm(x, gamma_q, beta_q, gamma_frac, eps_q, rms=False):
    """Bit-exact output codes (int64, rows x N) for INT8 codes ``x`` (rows x N).

    ``gamma_q`` and ``beta_q`` are the N per-channel integers from
    :func:`quantize_params`, ``gamma_frac`` their shared fraction bit count, ``eps_q``
    the integer eps from :func:`quantize_eps` (for this N); ``rms`` selects RMSNorm
    (no mean subtraction, ``beta`` still added: pass zeros for a plain RMSNorm).
    """
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows x N), not shape {x.shape}")
    n = x.shape[1]
    g = np.asarray(gamma_q, dtype=np.int64)
    b = np.asarray(beta_q, dtype=np.int64)
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ValueError("x must hold INT8 codes")
    if not 0 <= gamma_frac <= GAMMA_FRAC_MAX:
        raise ValueError(f"gamma_frac must lie in [0, {GAMMA_FRAC_MAX}]")
    if not 0 <= eps_q < 1 << EPS_BITS:
        raise ValueError(f"eps_q must lie in [0, 2**{EPS_BITS})")
    s1 = x.sum(axis=1, keepdims=True)
    s2 = (x * x).sum(axis=1, keepdims=True)
    d = n * s2 if rms else n * s2 - s1 * s1
    y, k = rsqrt_fixed((d << EPS_FRAC) + int(eps_q))
    u = n * x if rms else n * x - s1
    z = (u * y) >> np.maximum(k - EPS_FRAC // 2, 0)
    acc = z * g + (b << (Y_FRAC - BETA_FRAC + gamma_frac)) + (1 << (Y_FRAC - 1 + gamma_frac))
    return np.clip(acc >> (Y_FRAC + gamma_frac), -128, 127)


def quantize_params(gamma, beta, output_scale, output_zero_point=0):
    """Host quantization: ``(gamma_q, beta_q, gamma_frac)`` for float gamma and beta.

    ``gamma / output_scale`` is rounded to ``GAMMA_BITS`` signed bits with the most
    fraction bits (at most ``GAMMA_FRAC_MAX``) that fit the largest channel;
    ``beta / output_scale + output_zero_point`` to ``BETA_FRAC`` fraction bits (must fit
    ``BETA_BITS`` signed bits: |beta / s_out| below about 2047). Rounding: half to even
    (``np.rint``); these are parameters, not results.
    """
    gp = np.asarray(gamma, dtype=np.float64) / output_scale
    bp = np.asarray(beta, dtype=np.float64) / output_scale + output_zero_point
    limit = (1 << (GAMMA_BITS - 1)) - 1
    gamma_frac = 0
    for frac in range(GAMMA_FRAC_MAX, -1, -1):
        if np.max(np.abs(np.rint(gp * 2.0 ** frac)), initial=0) <= limit:
            gamma_frac = frac
            break
    else:
        raise ValueError("gamma / output_scale too large for the gamma field")
    gamma_q = np.rint(gp * 2.0 ** gamma_frac).astype(np.int64)
    beta_q = np.rint(bp * 2.0 ** BETA_FRAC).astype(np.int64)
    if np.abs(beta_q).max(initial=0) >= 1 << (BETA_BITS - 1):
        raise ValueError("beta / output_scale + zero point too large for the beta field")
    return gamma_q, beta_q, gamma_frac


def quantize_eps(eps, input_scale, n):
    """``E = round(eps / input_scale**2 * n**2 * 2**8)``, saturated to the field."""
    e = round(float(eps) / float(input_scale) ** 2 * n * n * (1 << EPS_FRAC))
    return int(min(max(e, 0), (1 << EPS_BITS) - 1))


def reference_layernorm(x, input_scale, gamma, beta, eps, output_scale, output_zero_point=0,
                        rms=False):
    """Float64 LayerNorm (RMSNorm) of the dequantized codes, in output LSB (not rounded)."""
    xr = np.asarray(x, dtype=np.float64) * input_scale
    if rms:
        normalized = xr / np.sqrt(np.mean(xr * xr, axis=1, keepdims=True) + eps)
        y = normalized * gamma
    else:
        mean = np.mean(xr, axis=1, keepdims=True)
        var = np.mean((xr - mean) ** 2, axis=1, keepdims=True)
        y = (xr - mean) / np.sqrt(var + eps) * gamma + beta
    return y / output_scale + output_zero_point


def reference_codes(reference):
    """The correctly rounded output codes: round half up, then clamp to INT8."""
    return np.clip(np.floor(np.asarray(reference) + 0.5), -128, 127).astype(np.int64)
