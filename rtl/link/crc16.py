"""CRC-16/CCITT-FALSE, one byte per cycle, as combinational logic.

Polynomial 0x1021 (x^16 + x^12 + x^5 + 1), initial value 0xFFFF, bytes fed MSB
first with no reflection, no final XOR; the check value of ``b"123456789"`` is
0x29B1. Golden model: :func:`sim.golden.link_frame.crc16`.

The eight bit steps of the shift register are unrolled at elaboration time, with
each output bit tracked as the set of input bits it is the XOR of, so every bit of
the result is one flat XOR of at most a handful of CRC and data bits.
"""

from functools import reduce
from operator import xor

from amaranth.hdl import Cat, Const, Value


__all__ = ["CRC16_POLY", "CRC16_INIT", "crc16_update"]


CRC16_POLY = 0x1021
CRC16_INIT = 0xFFFF


def _update_terms():
    """For each output bit, the CRC bits (0..15) and data bits (16..23) XORed into it."""
    crc = [frozenset([i]) for i in range(16)]
    for k in range(7, -1, -1):  # data MSB first
        feedback = crc[15] ^ frozenset([16 + k])
        shifted = [frozenset()] + crc[:15]
        crc = [shifted[i] ^ feedback if (CRC16_POLY >> i) & 1 else shifted[i]
               for i in range(16)]
    return crc


_TERMS = _update_terms()


def crc16_update(crc, byte):
    """The CRC after one more byte: a 16-bit combinational value.

    Parameters
    ----------
    crc : Value
        The CRC so far (16 bits; 0xFFFF before the first byte).
    byte : Value
        The next byte (8 bits).

    Returns
    -------
    Value
        ``unsigned(16)``, the updated CRC.
    """
    crc = Value.cast(crc)
    byte = Value.cast(byte)
    if crc.shape().width != 16 or byte.shape().width != 8:
        raise ValueError(f"Expected a 16-bit CRC and an 8-bit byte, not widths "
                         f"{crc.shape().width} and {byte.shape().width}")
    inputs = [crc[i] for i in range(16)] + [byte[i] for i in range(8)]
    bits = [reduce(xor, (inputs[j] for j in sorted(terms))) if terms else Const(0, 1)
            for terms in _TERMS]
    return Cat(*bits)
