"""Golden model of :class:`rtl.matmul.multiplier_pair.MultiplierPair` (the iCE40 ``SB_MAC16``
in its dual 8 x 8 mode, as the PE pairs configure it), cycle by cycle.

Float reference: the products are exact integers, so the reference is ``a * b + c`` in
Python integers; the model's only rounding is the wrap of the DSP's 16-bit adder.
"""

import numpy as np


__all__ = ["multiply_add", "run"]


def multiply_add(a, b, c):
    """``(a * b + c) mod 2**16`` for signed 8-bit ``a``, ``b`` and 16-bit ``c`` (arrays)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    c = np.asarray(c, dtype=np.int64)
    if ((a < -128) | (a > 127) | (b < -128) | (b > 127)).any():
        raise ValueError("a and b must be signed 8-bit values")
    if ((c < 0) | (c > 0xFFFF)).any():
        raise ValueError("c must be a 16-bit value")
    return ((a * b + c) & 0xFFFF).astype(np.int64)


def run(a, b, c, en):
    """The output ``p`` after each cycle of a stimulus (``a``, ``b``, ``c``, ``en``
    per cycle, one lane): three register stages enabled by ``en``; ``a`` and ``b``
    enter stage 1, ``c`` enters it one enabled cycle later (it skips the product
    stage); every register starts at 0."""
    a_reg = b_reg = c_reg = product = p = 0
    out = np.zeros(len(en), dtype=np.int64)
    for t, (ai, bi, ci, ei) in enumerate(zip(a, b, c, en)):
        if ei:
            p = (product + c_reg) & 0xFFFF
            product = int(multiply_add(a_reg, b_reg, 0))
            a_reg, b_reg, c_reg = int(ai), int(bi), int(ci)
        out[t] = p
    return out
