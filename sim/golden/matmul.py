"""Golden model of the matmul engine: ``C = A @ W`` on 8-bit codes, bit-exact.

Operands are raw 8-bit codes (integer arrays with values 0..255): ``A`` is M x K
(activations), ``W`` is K x N (weights), and ``mode`` is a
:class:`~rtl.matmul.mode.MatmulMode` that says how to read them.

Integer modes (``INT8``, ``UINT8``)
    A code is the two's complement byte of an int8 value; in ``UINT8`` mode the
    activation code is the uint8 value itself (softmax probabilities) and the
    weight stays int8. The result is the exact sum of products as int32. It can
    never wrap: ``|sum| <= K * 255 * 128 <= 65536 * 32640 < 2**31``.

FP8 modes (``E4M3``, ``E5M2``, ``E4M3_E5M2``, ``E5M2_E4M3``; activation format
first)
    The result is FP32, returned as uint32 bit patterns:

    * every product is exact (fp8 x fp8 fits in an 8-bit significand);
    * the sum over k is **exact**: nothing is rounded while accumulating, so
      the result does not depend on the summation order;
    * the exact sum is rounded **once** to FP32, round to nearest, ties to even.

    Special values, in priority order:

    * NaN (the canonical quiet NaN ``0x7FC00000``, sign 0) if any product is
      NaN (an operand is NaN, or Inf x 0; only E5M2 has infinities), or if the
      products include both +Inf and -Inf (Inf - Inf);
    * otherwise +Inf (``0x7F800000``) or -Inf (``0xFF800000``) if any product is
      infinite (then they all have that sign);
    * otherwise, if the exact sum is zero: -0.0 (``0x80000000``) if *every*
      product is a negative zero (IEEE: (-0) + (-0) = -0), else +0.0. An empty
      sum (K = 0) is +0.0;
    * otherwise the exact sum rounded to FP32 (RNE).

    Range: every product is a multiple of ``2**PRODUCT_MIN_EXPONENT`` = 2**-32
    (the smallest E5M2 subnormal squared) and at most 57344**2 < 2**32 in
    magnitude, so for ``K <= MAX_EXACT_K`` = 2**16 a nonzero exact sum has
    ``2**-32 <= |sum| < 2**48``. FP32 normals span 2**-126 .. 2**128, so the
    rounded result is always a normal number (or zero): no FP32 overflow,
    underflow or subnormal can happen. The accumulator therefore needs 80
    magnitude bits plus a sign (``|sum| * 2**32 < 2**80``).

Maximum K: ``MAX_EXACT_K`` (65536, from ``rtl/matmul/mode.py``) is the largest
reduction length for which every mode is exact: INT32 cannot overflow (see
above) and the FP8 fixed-point accumulator cannot overflow. This model refuses
larger K rather than silently changing its semantics.

Implementation of the FP8 path (fast and exact): each finite operand becomes a
signed integer ``(-1)**sign * significand * 2**(exponent - emin)`` where emin
is the format's smallest LSB exponent (-9 for E4M3, -16 for E5M2); it has at
most 33 bits signed (E5M2 57344 = 7 * 2**29). Each is split into two 16-bit
limbs and the four limb matmuls run in float64 through BLAS, where every
partial sum is an integer below 2**53 in magnitude and therefore exact (see
:func:`_exact_integer_matmul`). The limb sums are combined as Python integers
and rounded by :func:`exact_to_fp32_bits`. NaN, infinity and negative-zero
flags come from matmuls of indicator matrices (counts of matching products).

Float references:

* :func:`reference_matmul`: float64 matmul of the ml_dtypes-decoded values (the
  measurement baseline, not exact);
* :func:`exact_reference_matmul`: a slow, independent, loop-and-``Fraction``
  implementation of the same semantics, used by the tests on small shapes.
"""

import math
from fractions import Fraction

import numpy as np

from rtl.matmul.mode import MAX_EXACT_K, MatmulMode
from rtl.numerics.fp8_format import FORMAT_INFO, PRODUCT_MIN_EXPONENT

from . import fp8_codec


__all__ = ["matmul", "reference_matmul", "exact_reference_matmul", "exact_to_fp32_bits",
           "result_to_float", "int_codes", "fp8_codes",
           "FP32_NAN", "FP32_POS_INF", "FP32_NEG_INF", "FP32_NEG_ZERO"]


FP32_NAN = 0x7FC00000
FP32_POS_INF = 0x7F800000
FP32_NEG_INF = 0xFF800000
FP32_NEG_ZERO = 0x80000000

_LIMB_BITS = 16


# --------------------------------------------------------------------------- arguments

def _check_mode(mode):
    if isinstance(mode, MatmulMode):
        return mode
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        try:
            return MatmulMode(int(mode))
        except ValueError:
            pass
    raise ValueError(f"invalid matmul mode {mode!r}: expected a MatmulMode "
                     f"({', '.join(m.name for m in MatmulMode)}); codes 6 and 7 are not modes")


def _check_codes(codes, name):
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of 8-bit codes, got shape {codes.shape}")
    if codes.size == 0:
        return codes.astype(np.int64)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer codes 0..255, got dtype {codes.dtype}")
    if np.any(codes < 0) or np.any(codes > 255):
        raise ValueError(f"{name} codes must be in 0..255 (raw 8-bit patterns), "
                         f"got values in {codes.min()}..{codes.max()}")
    return codes.astype(np.int64)


def _check_arguments(a_codes, w_codes, mode):
    mode = _check_mode(mode)
    a = _check_codes(a_codes, "a_codes")
    w = _check_codes(w_codes, "w_codes")
    if a.shape[1] != w.shape[0]:
        raise ValueError(f"inner dimensions differ: a_codes is {a.shape[0]} x {a.shape[1]} (M x K), "
                         f"w_codes is {w.shape[0]} x {w.shape[1]} (K x N)")
    k = a.shape[1]
    if k > MAX_EXACT_K:
        raise ValueError(f"K = {k} exceeds MAX_EXACT_K = {MAX_EXACT_K}, the largest reduction "
                         f"length for which the engine's result is exact")
    return a, w, mode


def _int_values(codes, signed):
    """int64 values of 8-bit codes: two's complement int8, or uint8."""
    if signed:
        return codes - ((codes & 0x80) << 1)
    return codes


# --------------------------------------------------------------------------- FP32 rounding

def _to_fp32_bits_scalar(n, exponent):
    n = int(n)
    exponent = int(exponent)
    if n == 0:
        return 0
    sign = 0x80000000 if n < 0 else 0
    m = -n if n < 0 else n
    # Weight of the LSB of the 24-bit result significand; subnormals share the
    # LSB 2**-149 of the smallest normals.
    lsb = max(m.bit_length() - 24 + exponent, -149)
    shift = lsb - exponent
    if shift > 0:
        q = m >> shift
        rest = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rest > half or (rest == half and q & 1):
            q += 1
        if q == 1 << 24:           # carry out of the significand: next binade
            q >>= 1                # (the packing below would absorb the carry by
            lsb += 1               # itself; normalizing keeps q < 2**24 explicit)
    else:
        q = m << -shift
    # q < 2**23 only for subnormals (lsb == -149, exponent field 0). For normals
    # the hidden bit of q adds the 1 that turns (lsb + 149) into the biased
    # exponent lsb + 150; a subnormal rounding up to 2**23 becomes the smallest
    # normal by the same addition.
    magnitude = ((lsb + 149) << 23) + q
    if magnitude >= FP32_POS_INF:
        magnitude = FP32_POS_INF   # overflow (RNE overflows to infinity)
    return sign | magnitude


_to_fp32_bits_ufunc = np.frompyfunc(_to_fp32_bits_scalar, 2, 1)


def exact_to_fp32_bits(n, exponent):
    """FP32 bit patterns of the exact values ``n * 2**exponent``, rounded once (RNE).

    ``n`` is a Python int, a NumPy integer, or an array of them (object arrays
    of Python ints for values beyond 64 bits); ``exponent`` an int or an array
    broadcast against ``n``. Correct round to nearest, ties to even, including
    the carry into the exponent on rounding up, subnormals, and overflow to
    infinity. A zero gives +0.0 (the caller decides about -0.0).

    Returns a ``np.uint32`` for scalar input, else a uint32 array.
    """
    if np.ndim(n) == 0 and np.ndim(exponent) == 0:
        return np.uint32(_to_fp32_bits_scalar(n, exponent))
    n = np.asarray(n)
    if n.dtype.kind not in "iuO":
        raise TypeError("exact_to_fp32_bits() takes integers (or object arrays of Python ints)")
    if n.dtype.kind != "O":
        n = n.astype(object)  # Python ints: no int64 overflow in the shifts
    return np.asarray(_to_fp32_bits_ufunc(n, exponent)).astype(np.uint32)


# --------------------------------------------------------------------------- golden model

def _fp8_operand(codes, fmt):
    """Signed integer values in units of 2**emin, and indicator arrays, of FP8 codes."""
    f = fp8_codec.decode(codes, fmt)
    emin = FORMAT_INFO[fmt].min_exponent
    special = (f["nan"] | f["inf"]) == 1
    magnitude = f["significand"] << np.where(special, 0, f["exponent"] - emin)
    value = np.where(f["sign"] == 1, -magnitude, magnitude)
    value = np.where(special, 0, value)
    # |value| <= 7 * 2**29 (E5M2 57344 / 2**-16) < 2**32: 33 bits signed.
    assert np.all(np.abs(value) < 2**32)
    return {
        "value": value,
        "emin": emin,
        "nan": f["nan"] == 1,
        "inf": f["inf"] == 1,
        "zero": ~special & (f["significand"] == 0),
        "neg": f["sign"] == 1,
    }


def _count(x, y):
    """Exact ``x @ y`` for boolean matrices (counts <= K <= 2**16, exact in float64)."""
    return x.astype(np.float64) @ y.astype(np.float64)


def _exact_integer_matmul(a, w):
    """Exact ``a @ w`` of int64 matrices with entries below 2**32 in magnitude.

    Returns an object array of Python ints. Limbs: ``x = x1 * 2**16 + x0`` with
    ``x0`` in [0, 2**16) and ``x1 = x >> 16`` in [-2**16, 2**16). Every limb
    product is at most 2**32 in magnitude, so with K <= 2**16 every partial sum
    of a limb matmul is an integer of magnitude at most 2**48 < 2**53: exactly
    representable in float64, whatever order (or FMA) BLAS uses.
    """
    k = a.shape[1]
    assert k <= 2**16, "limb matmuls are exact in float64 only for K <= 2**16"
    assert np.all(np.abs(a) < 2**32) and np.all(np.abs(w) < 2**32)
    mask = (1 << _LIMB_BITS) - 1
    a1, a0 = (a >> _LIMB_BITS).astype(np.float64), (a & mask).astype(np.float64)
    w1, w0 = (w >> _LIMB_BITS).astype(np.float64), (w & mask).astype(np.float64)
    s11 = (a1 @ w1).astype(np.int64)
    s_mid = (a1 @ w0).astype(np.int64) + (a0 @ w1).astype(np.int64)
    s00 = (a0 @ w0).astype(np.int64)
    return ((s11.astype(object) << (2 * _LIMB_BITS))
            + (s_mid.astype(object) << _LIMB_BITS)
            + s00.astype(object))


def _matmul_int(a, w, mode):
    x = _int_values(a, signed=(mode == MatmulMode.INT8))
    y = _int_values(w, signed=True)
    total = x @ y  # int64, exact: products < 2**15, |sum| < 2**31
    # K <= MAX_EXACT_K = 65536 and |product| <= 255 * 128 keep |sum| < 2**31:
    # INT32 never wraps.
    assert total.size == 0 or (total.min() >= -2**31 and total.max() < 2**31)
    return total.astype(np.int32)


def _matmul_fp8(a, w, mode):
    m, k = a.shape
    n = w.shape[1]
    x = _fp8_operand(a, mode.activation_format)
    y = _fp8_operand(w, mode.weight_format)

    # NaN products: an operand is NaN, or Inf x 0.
    nan = (x["nan"].any(axis=1)[:, None] | y["nan"].any(axis=0)[None, :]
           | (_count(x["inf"], y["zero"]) > 0) | (_count(x["zero"], y["inf"]) > 0))
    # Infinite products (where not NaN): an infinite operand times a nonzero.
    x_nonzero = ~x["nan"] & ~x["zero"]
    y_nonzero = ~y["nan"] & ~y["zero"]
    xp, xn = ~x["neg"], x["neg"]
    yp, yn = ~y["neg"], y["neg"]
    x_inf_p, x_inf_n = x["inf"] & xp, x["inf"] & xn
    x_fin_p, x_fin_n = x_nonzero & ~x["inf"] & xp, x_nonzero & ~x["inf"] & xn
    y_nz_p, y_nz_n = y_nonzero & yp, y_nonzero & yn
    y_inf_p, y_inf_n = y["inf"] & yp, y["inf"] & yn
    pos_inf = (_count(x_inf_p, y_nz_p) + _count(x_inf_n, y_nz_n)
               + _count(x_fin_p, y_inf_p) + _count(x_fin_n, y_inf_n)) > 0
    neg_inf = (_count(x_inf_p, y_nz_n) + _count(x_inf_n, y_nz_p)
               + _count(x_fin_p, y_inf_n) + _count(x_fin_n, y_inf_p)) > 0
    nan |= pos_inf & neg_inf
    # Negative-zero products (meaningful where every product is finite): a zero
    # operand and opposite signs.
    x_zero_p, x_zero_n = x["zero"] & xp, x["zero"] & xn
    y_zero_p, y_zero_n = y["zero"] & yp, y["zero"] & yn
    x_nz_p, x_nz_n = x_nonzero & xp, x_nonzero & xn
    neg_zero_count = (_count(x_zero_p, y_zero_n | y_nz_n) + _count(x_zero_n, y_zero_p | y_nz_p)
                      + _count(x_nz_p, y_zero_n) + _count(x_nz_n, y_zero_p))
    all_neg_zero = (neg_zero_count == k) & (k > 0)

    total = _exact_integer_matmul(x["value"], y["value"])
    scale = x["emin"] + y["emin"]
    assert scale >= PRODUCT_MIN_EXPONENT
    bits = exact_to_fp32_bits(total, scale) if total.size else np.zeros((m, n), np.uint32)
    finite_nonzero = (total != 0).astype(bool)
    # The claim of the docstring: a nonzero exact sum is always an FP32 normal.
    exp_field = (bits >> 23) & 0xFF
    assert np.all(~finite_nonzero | ((exp_field >= 1) & (exp_field <= 254)))

    bits = np.where(all_neg_zero, np.uint32(FP32_NEG_ZERO), bits)
    bits = np.where(pos_inf, np.uint32(FP32_POS_INF), bits)
    bits = np.where(neg_inf, np.uint32(FP32_NEG_INF), bits)
    bits = np.where(nan, np.uint32(FP32_NAN), bits)
    return bits.astype(np.uint32).reshape(m, n)


def matmul(a_codes, w_codes, mode):
    """Bit-exact result of the matmul engine: ``A @ W`` on 8-bit codes.

    Parameters
    ----------
    a_codes : M x K integer array, values 0..255 (activation codes).
    w_codes : K x N integer array, values 0..255 (weight codes).
    mode : MatmulMode (or its integer value 0..5).

    Returns
    -------
    numpy.ndarray, M x N
        int32 sums for ``INT8``/``UINT8``; uint32 FP32 bit patterns for the FP8
        modes (see the module docstring for the exact semantics).

    Raises
    ------
    ValueError
        For arrays that are not 2-D, mismatched inner dimensions, codes outside
        0..255, K > MAX_EXACT_K, or an invalid mode.
    """
    a, w, mode = _check_arguments(a_codes, w_codes, mode)
    if mode.is_fp8:
        return _matmul_fp8(a, w, mode)
    return _matmul_int(a, w, mode)


def result_to_float(result, mode):
    """float64 values of a :func:`matmul` result (int32 sums, or FP32 bits via float32)."""
    mode = _check_mode(mode)
    result = np.asarray(result)
    if mode.is_fp8:
        return result.astype(np.uint32).view(np.float32).astype(np.float64)
    return result.astype(np.float64)


# --------------------------------------------------------------------------- helpers

def int_codes(values):
    """8-bit codes of integer values: int8 (-128..127, two's complement) or uint8 (0..255)."""
    values = np.asarray(values)
    if values.size and values.dtype.kind not in "iu":
        raise ValueError(f"int_codes() takes integers, got dtype {values.dtype}")
    values = values.astype(np.int64)
    if np.any(values < -128) or np.any(values > 255):
        raise ValueError("integer values must be in -128..255 (int8 or uint8)")
    return (values & 0xFF).astype(np.uint8)


def fp8_codes(values, fmt):
    """FP8 codes of float values in format ``fmt``, by ml_dtypes' cast (RNE, no saturation)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(fp8_codec.ML_DTYPES[fmt]).view(np.uint8)


def _reference_values(codes, mode, activation):
    if mode.is_fp8:
        fmt = mode.activation_format if activation else mode.weight_format
        return fp8_codec.reference_decode(codes, fmt)
    signed = not (activation and mode == MatmulMode.UINT8)
    return _int_values(codes, signed).astype(np.float64)


def reference_matmul(a_codes, w_codes, mode):
    """float64 ``A @ W`` of the decoded values (ml_dtypes for FP8): the float baseline.

    Not exact for FP8 (float64 rounds partial sums), exact for the integer modes.
    Inf x 0 and Inf - Inf give NaN, as IEEE float64 does.
    """
    a, w, mode = _check_arguments(a_codes, w_codes, mode)
    x = _reference_values(a, mode, activation=True)
    y = _reference_values(w, mode, activation=False)
    with np.errstate(invalid="ignore", over="ignore"):
        return x @ y


# --------------------------------------------------------------------------- slow, exact reference

def _fraction_to_fp32_bits(value):
    """FP32 bits of a nonzero Fraction, RNE; independent of :func:`exact_to_fp32_bits`."""
    negative = value < 0
    value = abs(value)
    # Scale so that 2**23 <= value / 2**e < 2**24 (or e = -149 for subnormals).
    e = value.numerator.bit_length() - value.denominator.bit_length() - 23
    while value / Fraction(2) ** e >= 2**24:
        e += 1
    while value / Fraction(2) ** e < 2**23:
        e -= 1
    e = max(e, -149)
    scaled = value / Fraction(2) ** e
    q = scaled.numerator // scaled.denominator
    rest = scaled - q
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and q % 2 == 1):
        q += 1
    # q * 2**e is exact in float64 and exactly representable in float32 (or
    # beyond its range, which the float32 cast turns into infinity).
    exact = math.ldexp(q, e)
    with np.errstate(over="ignore"):
        f32 = np.array([-exact if negative else exact], dtype=np.float64).astype(np.float32)
    return int(f32.view(np.uint32)[0])


def exact_reference_matmul(a_codes, w_codes, mode):
    """Slow, independent reference with the same semantics as :func:`matmul`.

    Python loops over ml_dtypes-decoded values (FP8) or Python ints (integer
    modes); FP8 sums are exact ``Fraction`` sums rounded once to FP32. Only for
    small shapes.
    """
    a, w, mode = _check_arguments(a_codes, w_codes, mode)
    m, k = a.shape
    n = w.shape[1]
    if not mode.is_fp8:
        x = [[int(v) for v in row] for row in a.astype(np.uint8).view(
            np.uint8 if mode == MatmulMode.UINT8 else np.int8)]
        y = [[int(v) for v in row] for row in w.astype(np.uint8).view(np.int8)]
        out = np.zeros((m, n), dtype=np.int32)
        for i in range(m):
            for j in range(n):
                s = 0
                for kk in range(k):
                    s += x[i][kk] * y[kk][j]
                out[i, j] = s
        return out

    x = [[float(v) for v in row] for row in fp8_codec.reference_decode(a, mode.activation_format)]
    y = [[float(v) for v in row] for row in fp8_codec.reference_decode(w, mode.weight_format)]
    out = np.zeros((m, n), dtype=np.uint32)
    for i in range(m):
        for j in range(n):
            any_nan = False
            inf_signs = set()
            terms = []
            all_neg_zero = k > 0
            for kk in range(k):
                p, q = x[i][kk], y[kk][j]
                sign = math.copysign(1.0, p) * math.copysign(1.0, q)
                if math.isnan(p) or math.isnan(q):
                    any_nan = True
                    all_neg_zero = False
                elif math.isinf(p) or math.isinf(q):
                    if p == 0 or q == 0:
                        any_nan = True
                    else:
                        inf_signs.add(sign)
                    all_neg_zero = False
                else:
                    product = Fraction(p) * Fraction(q)
                    terms.append(product)
                    if not (product == 0 and sign < 0):
                        all_neg_zero = False
            if any_nan or len(inf_signs) == 2:
                out[i, j] = FP32_NAN
            elif inf_signs:
                out[i, j] = FP32_POS_INF if inf_signs == {1.0} else FP32_NEG_INF
            else:
                total = sum(terms, Fraction(0))
                if total == 0:
                    out[i, j] = FP32_NEG_ZERO if all_neg_zero else 0
                else:
                    out[i, j] = _fraction_to_fp32_bits(total)
    return out
