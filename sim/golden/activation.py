"""Golden model of the activation unit (``rtl/activation.py``): 256-entry INT8 tables.

For an INT8 input every elementwise function has only 256 possible inputs, so the
hardware is a table the host fills from this model; the unit is exact with respect
to it by construction. Entry for the code ``q`` (stored at index ``q & 0xFF``)::

    real  = (q - input_zero_point) * input_scale
    table = clamp(round_half_away(f(real) / output_scale) + output_zero_point, -128, 127)

**Rounding**: to nearest, ties away from zero (``std::round``), applied once to the
exact quotient of the float64 values ``f(real)`` and ``output_scale`` (computed with
rationals, so a tie is a true tie). The functions are evaluated in float64
(:data:`FUNCTIONS`): GELU in its erf form (as BERT uses), the tanh approximation of
GELU, SiLU and ReLU.

:func:`apply` is what the hardware computes: a lookup of each code's table entry.
INT32 inputs are requantized to INT8 first (``rtl/numerics/requantizer.py``), then
looked up.
"""

import math
from fractions import Fraction

import numpy as np


__all__ = ["FUNCTIONS", "gelu", "gelu_tanh", "silu", "relu", "round_half_away", "build_table", "apply"]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    """GELU, erf form: ``x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    """SiLU (swish): ``x * sigmoid(x)``, written so that exp never overflows."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, x / (1.0 + e), x * e / (1.0 + e))


def relu(x):
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0)


FUNCTIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu, "relu": relu}


def round_half_away(v):
    """Round float64 values to the nearest integer, ties away from zero."""
    v = np.asarray(v, dtype=np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _check_zero_point(name, value):
    if not isinstance(value, (int, np.integer)) or not -128 <= int(value) <= 127:
        raise ValueError(f"{name} must be an integer in [-128, 127], not {value!r}")


def build_table(function, input_scale, output_scale, input_zero_point=0, output_zero_point=0):
    """The 256 table entries (int64, index ``code & 0xFF``) for ``function``.

    ``function`` is a name from :data:`FUNCTIONS` or a callable on float64 arrays.
    Scales must be positive and finite.
    """
    f = FUNCTIONS[function] if isinstance(function, str) else function
    for name, scale in (("input_scale", input_scale), ("output_scale", output_scale)):
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{name} must be positive and finite, not {scale!r}")
    _check_zero_point("input_zero_point", input_zero_point)
    _check_zero_point("output_zero_point", output_zero_point)
    index = np.arange(256)
    codes = np.where(index < 128, index, index - 256)
    real = (codes - int(input_zero_point)) * float(input_scale)
    values = np.asarray(f(real), dtype=np.float64)
    s_out = Fraction(float(output_scale))
    entries = []
    for value in values.tolist():
        # The exact quotient of the two float64 values, rounded once (a float64
        # division would round first and could move a value onto a tie).
        v = Fraction(value) / s_out
        magnitude = math.floor(abs(v) + Fraction(1, 2))
        entries.append(min(max((magnitude if v >= 0 else -magnitude) + int(output_zero_point),
                               -128), 127))
    return np.array(entries, dtype=np.int64)


def apply(table, codes):
    """The hardware's function: each INT8 code (-128..127) replaced by its table entry."""
    table = np.asarray(table, dtype=np.int64)
    if table.shape != (256,):
        raise ValueError(f"table must have 256 entries, not shape {table.shape}")
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and (codes.min() < -128 or codes.max() > 127):
        raise ValueError("codes must lie in [-128, 127]")
    return table[codes & 0xFF]
