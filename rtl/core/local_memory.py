"""On-chip memory behind the core's external memory port, shared with the host link."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .buffer_reader import BufferReader
from .memory_port import memory_port_signature


__all__ = ["LocalMemory"]


class LocalMemory(wiring.Component):
    """A block RAM of ``words`` words that answers the core's memory port (bursts) and the
    host link's word reads and writes — the "external memory" of a board without DRAM.

    The core goes first: one read burst and one write burst at a time, a word per cycle;
    a host read waits for the end of the core's read burst, a host write for the end of
    its write burst. Addresses wrap at ``words`` (the
    core checks its accesses against its ``dram_words``, the link against its
    ``memory_words``; build both with this ``words``).

    Members
    -------
    core : In(memory_port_signature(word_bits))
    host_write : In(stream.Signature({"address": 32, "data": word_bits}))
    host_read_address : In(stream.Signature(32)); host_read_data : Out(stream.Signature(word_bits))
    """

    def __init__(self, *, words, word_bits):
        self._words = words
        self._word_bits = word_bits
        super().__init__({
            "core": In(memory_port_signature(word_bits)),
            "host_write": In(stream.Signature(data.StructLayout({"address": 32, "data": word_bits}))),
            "host_read_address": In(stream.Signature(32)),
            "host_read_data": Out(stream.Signature(word_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        abits = max(1, ceil_log2(self._words))
        m.submodules.ram = ram = Memory(shape=self._word_bits, depth=self._words, init=[])
        write = ram.write_port()
        read = ram.read_port()
        m.submodules.reader = reader = BufferReader(addr_width=abits, data_width=self._word_bits)
        m.d.comb += [read.addr.eq(reader.port_addr), read.en.eq(reader.port_en),
                     reader.port_data.eq(read.data)]

        # Reads: the core's burst addresses first, a host address in a free cycle (tag 1).
        core = self.core
        r_active = Signal()
        r_addr = Signal(32)
        r_left = Signal(16)
        m.d.comb += core.rd_req.ready.eq(~r_active)
        with m.If(core.rd_req.valid & ~r_active & (core.rd_req.payload.len != 0)):
            m.d.sync += [r_active.eq(1), r_addr.eq(core.rd_req.payload.addr),
                         r_left.eq(core.rd_req.payload.len)]
        with m.If(r_active):
            m.d.comb += [reader.addr.valid.eq(1), reader.addr.payload.addr.eq(r_addr),
                         reader.addr.payload.tag.eq(0)]
            with m.If(reader.addr.ready):
                m.d.sync += [r_addr.eq(r_addr + 1), r_left.eq(r_left - 1)]
                with m.If(r_left == 1):
                    m.d.sync += r_active.eq(0)
        with m.Else():
            m.d.comb += [reader.addr.valid.eq(self.host_read_address.valid),
                         reader.addr.payload.addr.eq(self.host_read_address.payload),
                         reader.addr.payload.tag.eq(1),
                         self.host_read_address.ready.eq(reader.addr.ready)]
        m.d.comb += [
            core.rd_data.payload.eq(reader.data.payload.data),
            self.host_read_data.payload.eq(reader.data.payload.data),
            core.rd_data.valid.eq(reader.data.valid & ~reader.data.payload.tag),
            self.host_read_data.valid.eq(reader.data.valid & reader.data.payload.tag),
            reader.data.ready.eq(Mux(reader.data.payload.tag, self.host_read_data.ready,
                                     core.rd_data.ready)),
        ]

        # Writes: the core's burst words first, a host word in a free cycle; one ack per burst.
        w_active = Signal()
        w_addr = Signal(32)
        w_left = Signal(16)
        ack = Signal()
        m.d.comb += [core.wr_req.ready.eq(~w_active & ~ack),
                     core.wr_data.ready.eq(w_active),
                     core.wr_ack.valid.eq(ack), core.wr_ack.payload.eq(0)]
        with m.If(core.wr_ack.ready & ack):
            m.d.sync += ack.eq(0)
        with m.If(core.wr_req.valid & core.wr_req.ready):
            with m.If(core.wr_req.payload.len == 0):
                m.d.sync += ack.eq(1)
            with m.Else():
                m.d.sync += [w_active.eq(1), w_addr.eq(core.wr_req.payload.addr),
                             w_left.eq(core.wr_req.payload.len)]
        core_word = core.wr_data.valid & w_active
        with m.If(core_word):
            m.d.sync += [w_addr.eq(w_addr + 1), w_left.eq(w_left - 1)]
            with m.If(w_left == 1):
                m.d.sync += [w_active.eq(0), ack.eq(1)]
        # A host word waits for the whole of a core burst (``w_active``, a register), not
        # only for the core's words: the link's handshake then does not run from the
        # core's store state into the bridge (the ULX3S core's path at 83 MHz with some
        # placements, 11.2 ns). A burst is never stalled by the host, so it ends.
        host_word = self.host_write.valid & ~w_active
        m.d.comb += [
            self.host_write.ready.eq(~w_active),
            write.en.eq(core_word | host_word),
            write.addr.eq(Mux(w_active, w_addr, self.host_write.payload.address)),
            write.data.eq(Mux(w_active, core.wr_data.payload, self.host_write.payload.data)),
        ]
        return m
