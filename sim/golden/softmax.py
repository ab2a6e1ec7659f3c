"""Golden model of the softmax unit (``rtl/softmax.py``), and its float64 reference.

:func:`softmax` is bit-exact with the RTL. Per row, over the unmasked elements
(element ``j`` is unmasked iff ``j < limit``, see :func:`row_limits`)::

    m    = max x_j                                   INT8
    e_j  = table[m - x_j]                            m - x_j in 0..255; UINT16
    S    = sum e_j                                   exact, < max_length * 2**16
    b    = bit_length(S)                             1 .. 26 (S = 0: every output is 0)
    R    = floor(2**(b + 16) / S)                    in (2**16, 2**17]: 18 bits
    p_j  = ((e_j * R) >> (b + 7) + 1) >> 1           round half up of e_j*R / 2**(b+8)
    out  = min(p_j, 255)                             UINT8, scale 1/256

so ``p_j`` is ``256 * e_j / S`` computed with one reciprocal per row
(``R / 2**(b + 16)`` is ``1/S`` truncated to 17 significant bits, relative
error below ``2**-16``) and one rounding to nearest, ties up. A probability of
exactly 1.0 (``p_j = 256``, possible only when one element holds the whole sum)
is **clamped** to 255, which keeps the output UINT8 for the UINT8 x INT8 matmul
mode; masked elements and rows whose sum is 0 (fully masked rows) are 0.

:func:`exp_table` is the host's table for a per-tensor input scale:
``table[d] = round(exp(-d * scale) * EXP_ONE)``, ``EXP_ONE = 2**15``, so
``table[0] = 32768`` and entries fit 16 bits.

:func:`reference_softmax` is the float64 softmax of the dequantized scores
``x * scale`` with the same masks; fully masked rows are all zero.
"""

import numpy as np


__all__ = ["EXP_ONE", "EXP_BITS", "RECIPROCAL_BITS", "TABLE_SIZE", "exp_table", "row_limits",
           "element_mask", "row_errors", "row_sums", "reciprocals", "softmax", "reference_softmax"]


#: The table's fixed-point 1.0: table entries are ``exp(-d * scale) * EXP_ONE``.
EXP_ONE = 1 << 15
#: Width of a table entry (unsigned).
EXP_BITS = 16
#: ``R`` has ``RECIPROCAL_FRACTION + 2`` bits: ``R = floor(2**(b + F) / S)``.
RECIPROCAL_FRACTION = 16
RECIPROCAL_BITS = RECIPROCAL_FRACTION + 2
TABLE_SIZE = 256


def exp_table(scale, one=EXP_ONE):
    """The 256-entry table ``round(exp(-d * scale) * one)`` for ``d = 0..255`` (uint16 values).

    ``scale`` is the real value of one step of the INT8 scores; rounding is half up.
    """
    scale = float(scale)
    if not scale >= 0 or not np.isfinite(scale):
        raise ValueError(f"scale must be a finite non-negative number, not {scale!r}")
    if not 1 <= one < (1 << EXP_BITS):
        raise ValueError(f"one must lie in [1, {(1 << EXP_BITS) - 1}], not {one!r}")
    d = np.arange(TABLE_SIZE, dtype=np.float64)
    return np.floor(np.exp(-d * scale) * one + 0.5).astype(np.int64)


def _rows_array(name, value, rows):
    array = np.broadcast_to(np.asarray(value, dtype=np.int64), (rows,))
    return array


def row_limits(lengths, causal, rows, offsets):
    """Per row, the number of leading unmasked elements.

    Element ``j`` is masked iff ``j >= length`` or (``causal`` and
    ``j > row + offset``), so the unmasked elements are ``j < limit`` with
    ``limit = length`` or, in causal mode, ``clamp(row + offset + 1, 0, length)``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    causal_limit = np.clip(np.asarray(rows, dtype=np.int64) + np.asarray(offsets, dtype=np.int64) + 1,
                           0, lengths)
    return np.where(np.asarray(causal, dtype=bool), causal_limit, lengths)


def element_mask(n, lengths, causal, rows, offsets):
    """A bool array (rows x n): True where the element takes part in the softmax."""
    limits = np.atleast_1d(row_limits(lengths, causal, rows, offsets))
    return np.arange(n)[None, :] < limits[:, None]


def row_errors(counts, lengths, max_length):
    """Descriptor errors: ``count == 0``, ``count > max_length`` or ``length > count``.

    An error row still consumes ``count`` input elements; it produces ``max(count, 1)``
    output elements, all 0, flagged ``error``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    return (counts == 0) | (counts > max_length) | (lengths > counts)


def _prepare(scores, lengths, causal, rows, offsets, table):
    x = np.asarray(scores)
    if x.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows x elements), not shape {x.shape}")
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ValueError("scores must be INT8 values")
    x = x.astype(np.int64)
    n_rows, n = x.shape
    lengths = _rows_array("lengths", lengths, n_rows)
    if lengths.size and (lengths.min() < 0 or lengths.max() > n):
        raise ValueError(f"lengths must lie in [0, {n}] (the row length)")
    mask = element_mask(n, lengths, _rows_array("causal", causal, n_rows),
                        _rows_array("rows", rows, n_rows), _rows_array("offsets", offsets, n_rows))
    table = np.asarray(table, dtype=np.int64)
    if table.shape != (TABLE_SIZE,) or table.min() < 0 or table.max() >= (1 << EXP_BITS):
        raise ValueError(f"table must hold {TABLE_SIZE} values in [0, {(1 << EXP_BITS) - 1}]")
    return x, mask, table


def _exp_values(x, mask, table):
    row_max = np.where(mask, x, -128).max(axis=1) if x.shape[1] else np.full(x.shape[0], -128)
    d = np.clip(row_max[:, None] - x, 0, TABLE_SIZE - 1)
    return np.where(mask, table[d], 0)


def reciprocals(sums):
    """``(R, b)`` per row sum: ``b = bit_length(S)``, ``R = floor(2**(b + 16) / S)`` (0 if S = 0)."""
    sums = np.asarray(sums, dtype=np.int64)
    bits = np.zeros_like(sums)
    for k in range(63):
        bits = np.where((sums >> k) != 0, k + 1, bits)
    r = np.where(sums > 0, (np.int64(1) << (bits + RECIPROCAL_FRACTION)) // np.maximum(sums, 1), 0)
    return r, bits


def row_sums(scores, lengths, causal, rows, offsets, table):
    """The exact per-row sums ``S`` of the table values (int64)."""
    x, mask, table = _prepare(scores, lengths, causal, rows, offsets, table)
    return _exp_values(x, mask, table).sum(axis=1)


def softmax(scores, lengths, causal, rows, offsets, table):
    """UINT8 probabilities (scale 1/256), bit-exact with the RTL.

    Parameters
    ----------
    scores : array (rows x n) of INT8 values
    lengths : per row (or scalar), valid elements in 0..n; the rest is padding
    causal : per row (or scalar) bool; in causal mode element ``j > row + offset`` is masked
    rows, offsets : per row (or scalar) integers: the row index and the causal offset
    table : 256 values in 0..65535, e.g. from :func:`exp_table`

    Returns
    -------
    numpy.ndarray of uint8, rows x n; masked elements and fully masked rows are 0.
    """
    x, mask, table = _prepare(scores, lengths, causal, rows, offsets, table)
    e = _exp_values(x, mask, table)
    sums = e.sum(axis=1)
    r, bits = reciprocals(sums)
    shift = np.maximum(bits + RECIPROCAL_FRACTION - 9, 0)[:, None]
    p = (((e * r[:, None]) >> shift) + 1) >> 1
    p = np.where(mask & (sums[:, None] > 0), np.minimum(p, 255), 0)
    return p.astype(np.uint8)


def reference_softmax(scores, scale, lengths, causal, rows, offsets):
    """float64 softmax of ``scores * scale`` over the unmasked elements; masked and
    fully masked rows give 0."""
    x = np.asarray(scores, dtype=np.float64) * float(scale)
    n_rows, n = x.shape
    mask = element_mask(n, _rows_array("lengths", lengths, n_rows), _rows_array("causal", causal, n_rows),
                        _rows_array("rows", rows, n_rows), _rows_array("offsets", offsets, n_rows))
    row_max = np.where(mask, x, -np.inf).max(axis=1) if n else np.full(n_rows, -np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.where(mask, np.exp(np.minimum(x - row_max[:, None], 0.0)), 0.0)
    sums = e.sum(axis=1)
    return np.where(sums[:, None] > 0, e / np.where(sums > 0, sums, 1.0)[:, None], 0.0)
