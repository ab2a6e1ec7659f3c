"""A word write into one of the on-chip buffers."""

from amaranth.lib import data

from ..isa import Bank


__all__ = ["buffer_write_layout"]


def buffer_write_layout(word_bits):
    return data.StructLayout({"bank": Bank, "addr": 16, "data": word_bits})
