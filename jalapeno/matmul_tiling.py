"""Host-side tiling of a matrix product onto the matmul engine.

The engine computes one pass at a time: up to ``rows`` of K against ``cols``
output columns, for up to ``max_rows`` rows of A (see
``rtl/matmul/engine.py``). :func:`plan_matmul` cuts ``A[M x K] . W[K x N]`` into
passes (M in chunks of ``max_rows``, N in tiles of ``cols``, K in tiles of
``rows``, accumulating in place over the K tiles and emitting after the last
one); :func:`assemble` puts the emitted rows back together.

Remainders are zero-padded. In the FP8 modes the padding of A is ``0x80``
(negative zero), so that a padded product is -0 x +0 = -0, which leaves both the
exact sum and its "every product was -0" flag unchanged; in the integer modes it
is 0. (For K = 0 the padding is +0: the empty sum is +0.)
"""

from dataclasses import dataclass

import numpy as np

from rtl.matmul.mode import MAX_EXACT_K, MatmulMode


__all__ = ["MatmulPass", "plan_matmul", "assemble"]


@dataclass
class MatmulPass:
    """One pass of the engine and where its results go."""
    mode: MatmulMode
    accumulate: bool
    emit: bool
    weight_tile: np.ndarray   # rows x cols codes (uint8)
    a_rows: np.ndarray        # M x rows codes (uint8)
    row_offset: int           # first output row (in C) of this pass
    col_offset: int           # first output column (in C) of this pass
    cols_used: int            # how many of the engine's columns are real

    @property
    def m(self):
        return self.a_rows.shape[0]

    def command(self):
        """The pass command as a dict of the engine's ``cmd`` fields."""
        return {"mode": self.mode.value, "rows": self.m,
                "accumulate": int(self.accumulate), "emit": int(self.emit)}


def _codes(name, array):
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of 8-bit codes, not shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{name} must hold 8-bit codes (0..255)")
    return array.astype(np.uint8)


def plan_matmul(a_codes, w_codes, mode, *, rows, cols, max_rows):
    """Passes computing ``A . W`` on a ``rows`` x ``cols`` engine.

    ``a_codes`` is M x K and ``w_codes`` K x N, both raw 8-bit codes (two's
    complement bytes for int8). Returns the passes in the order to send them.
    """
    mode = MatmulMode(mode)
    a = _codes("A", a_codes)
    w = _codes("W", w_codes)
    (m_total, k_total), (k_w, n_total) = a.shape, w.shape
    if k_total != k_w:
        raise ValueError(f"A is {m_total} x {k_total} but W is {k_w} x {n_total}: inner sizes differ")
    if k_total > MAX_EXACT_K:
        raise ValueError(f"K = {k_total} exceeds {MAX_EXACT_K}, the largest K summed exactly")
    # K = 0 is the empty sum, +0: pad with +0 then.
    a_pad = 0x80 if mode.is_fp8 and k_total > 0 else 0x00
    k_tiles = max(1, -(-k_total // rows))
    passes = []
    for m0 in range(0, m_total, max_rows):
        m_count = min(max_rows, m_total - m0)
        for n0 in range(0, n_total, cols):
            n_count = min(cols, n_total - n0)
            for kt in range(k_tiles):
                k0 = kt * rows
                k_count = max(0, min(rows, k_total - k0))
                tile = np.zeros((rows, cols), dtype=np.uint8)
                tile[:k_count, :n_count] = w[k0:k0 + k_count, n0:n0 + n_count]
                a_rows = np.full((m_count, rows), a_pad, dtype=np.uint8)
                a_rows[:, :k_count] = a[m0:m0 + m_count, k0:k0 + k_count]
                passes.append(MatmulPass(mode=mode, accumulate=kt > 0, emit=kt == k_tiles - 1,
                                         weight_tile=tile, a_rows=a_rows, row_offset=m0,
                                         col_offset=n0, cols_used=n_count))
    return passes


def assemble(passes, result_rows, m_total, n_total):
    """Put the emitted result rows (in the order they came out) into an M x N array.

    ``result_rows`` is a sequence of rows of ``cols`` unsigned 32-bit values.
    Returns int32 for the integer modes and FP32 bit patterns (uint32) for the
    FP8 modes, like :func:`sim.golden.matmul.matmul`.
    """
    out = np.zeros((m_total, n_total), dtype=np.uint32)
    rows_iter = iter(result_rows)
    mode = passes[0].mode if passes else MatmulMode.INT8
    for p in passes:
        if not p.emit:
            continue
        for i in range(p.m):
            row = next(rows_iter, None)
            if row is None:
                raise ValueError("fewer result rows than the passes emit")
            row = np.asarray(row, dtype=np.uint64)[:p.cols_used].astype(np.uint32)
            out[p.row_offset + i, p.col_offset:p.col_offset + p.cols_used] = row
    leftover = sum(1 for _ in rows_iter)
    if leftover:
        raise ValueError(f"{leftover} more result rows than the passes emit")
    return out if mode.is_fp8 else out.view(np.int32)
