"""Turns a TABLE instruction's words into the writes of the activation, softmax or LayerNorm tables."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..activation import ActivationTableWrite
from ..isa import TableTarget
from ..layernorm import layernorm_param_layout
from ..softmax import table_entry_layout


__all__ = ["TableLoader"]


class TableLoader(wiring.Component):
    """``count`` 32-bit entries, ``lanes / 4`` per word (entry e in bits 32e..32e+31), to
    the table ``target`` selects: activation (entry i -> code i, low 8 bits), softmax
    (entry i -> exponential i, low 16 bits) or LayerNorm (entries 2c and 2c + 1 ->
    gamma and beta of channel c). Entries past ``count`` in the last word are dropped.
    ``done`` pulses with the last write.

    One write per cycle, with no bubble between words (the next word is taken in the
    cycle the current one's last entry is written); with two or more entries per word a
    LayerNorm write takes a gamma and beta pair at once, so a LayerNorm table of N
    channels loads in N cycles (with one entry per word, the 4-lane core: 2N)."""

    def __init__(self, *, lanes, max_hidden):
        self._lanes = lanes
        super().__init__({
            "start": In(1),
            "target": In(TableTarget),
            "count": In(16),
            "words": In(stream.Signature(8 * lanes)),
            "activation": Out(stream.Signature(ActivationTableWrite)),
            "softmax": Out(stream.Signature(table_entry_layout())),
            "layernorm": Out(stream.Signature(layernorm_param_layout(max_hidden))),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        per_word = self._lanes // 4
        pairs = per_word >= 2          # a gamma/beta pair always lies in one word
        word = Signal(data.ArrayLayout(32, per_word))
        held = Signal()
        lane = Signal(range(per_word))
        index = Signal(16)
        gamma = Signal(32)
        entry = Signal(32)
        following = Signal(32)         # the entry after ``entry`` (pairs only)
        with m.Switch(lane):
            for i in range(per_word):
                with m.Case(i):
                    m.d.comb += entry.eq(word[i])
                    if pairs and i + 1 < per_word:
                        m.d.comb += following.eq(word[i + 1])
        is_layernorm = self.target == TableTarget.LAYERNORM
        m.d.comb += [
            self.activation.payload.index.eq(index),
            self.activation.payload.value.eq(entry[:8]),
            self.softmax.payload.index.eq(index),
            self.softmax.payload.value.eq(entry[:16]),
            self.layernorm.payload.index.eq(index[1:]),
            self.layernorm.payload.gamma.eq(gamma),
            self.layernorm.payload.beta.eq(entry),
        ]
        if pairs:
            m.d.comb += [self.layernorm.payload.gamma.eq(entry),
                         self.layernorm.payload.beta.eq(following)]
        taken = Signal()
        with m.If(held):
            with m.Switch(self.target):
                with m.Case(TableTarget.ACTIVATION):
                    m.d.comb += [self.activation.valid.eq(1), taken.eq(self.activation.ready)]
                with m.Case(TableTarget.SOFTMAX):
                    m.d.comb += [self.softmax.valid.eq(1), taken.eq(self.softmax.ready)]
                with m.Case(TableTarget.LAYERNORM):
                    if pairs:
                        m.d.comb += [self.layernorm.valid.eq(1), taken.eq(self.layernorm.ready)]
                    else:
                        with m.If(~index[0]):
                            m.d.comb += taken.eq(1)
                            m.d.sync += gamma.eq(entry)
                        with m.Else():
                            m.d.comb += [self.layernorm.valid.eq(1), taken.eq(self.layernorm.ready)]
                with m.Default():
                    m.d.comb += taken.eq(1)
        advance = Mux(is_layernorm, 2 if pairs else 1, 1)
        last = Signal()
        word_end = Signal()
        m.d.comb += [
            last.eq(index + advance >= self.count),
            word_end.eq(last | (lane + advance >= per_word)),
            # the next word comes in as the current one's last entry is written
            self.words.ready.eq(~held | (taken & word_end & ~last)),
        ]
        with m.If(taken & ~self.start):
            m.d.sync += [index.eq(index + advance), lane.eq(lane + advance)]
            with m.If(last):
                m.d.comb += self.done.eq(1)
            with m.If(word_end):
                m.d.sync += held.eq(0)
        with m.If(self.start):
            m.d.sync += [index.eq(0), held.eq(0), lane.eq(0)]
        with m.Elif(self.words.valid & self.words.ready):
            m.d.sync += [word.eq(self.words.payload), held.eq(1), lane.eq(0)]
        return m
