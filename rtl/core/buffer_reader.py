"""A stream front end for a block-RAM read port: addresses in, words out, with backpressure."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out


__all__ = ["BufferReader"]


class BufferReader(wiring.Component):
    """Reads the words named on ``addr`` through a synchronous read port, in order.

    A read is issued in the cycle an address is taken; its word lands in a small
    FIFO in the next cycle, which is how a one-cycle read latency is combined with
    backpressure on ``data``. Addresses are taken only while the FIFO has room for
    every read in flight, so a word is never lost. Throughput: one word per cycle.

    A ``tag`` travels with every address and comes back with its word, so one read
    port can serve several consumers in turn.

    Parameters
    ----------
    addr_width, data_width, tag_width : int
    address_stage : bool
        Take the address into a register first and read from there a cycle later:
        ``port_addr`` then comes from a flip-flop, not from the consumer's address
        arithmetic (an address adder and multiplexer into every block RAM of the buffer
        was the ULX3S core's critical path at 83 MHz with some placements). Words come
        a cycle later; throughput is still one word per cycle (``port_en`` comes with the
        registered address).
    data_stage : bool
        Take the word read into a register before the FIFO: the block RAM's output (its
        clock-to-output delay is 5.8 ns on the ECP5) and the multiplexer over the block
        RAMs of a deep buffer then end at a flip-flop, not at the FIFO's LUT RAM (12.0 ns,
        the ULX3S core's critical path at 83 MHz with some placements). Words come a cycle
        later; the FIFO is a word deeper, so throughput is still one word per cycle.

    Members
    -------
    addr : In(stream.Signature({"addr", "tag"}))
    data : Out(stream.Signature({"data", "tag"}))
    port_addr, port_en : Out; port_data : In
        To the memory's read port (``transparent_for`` is not needed).
    """

    DEPTH = 4

    def __init__(self, *, addr_width, data_width, tag_width=1, address_stage=False,
                 data_stage=False):
        self._address_stage = bool(address_stage)
        self._data_stage = bool(data_stage)
        self._addr_layout = data.StructLayout({"addr": addr_width, "tag": tag_width})
        self._data_layout = data.StructLayout({"data": data_width, "tag": tag_width})
        super().__init__({
            "addr": In(stream.Signature(self._addr_layout)),
            "data": Out(stream.Signature(self._data_layout)),
            "port_addr": Out(addr_width),
            "port_en": Out(1),
            "port_data": In(data_width),
        })

    def elaborate(self, platform):
        m = Module()
        depth = self.DEPTH + self._data_stage
        m.submodules.fifo = fifo = SyncFIFO(width=self._data_layout.size, depth=depth)
        inflight = Signal()
        taken = Signal()          # an address is taken in this cycle
        issue = Signal()          # a read is issued in this cycle
        # A word in the data register (data_stage): it goes into the FIFO in this cycle.
        held = Signal()
        held_word = Signal(self._data_layout)
        # Room for the words of addresses not yet taken: the FIFO's depth less the words on
        # their way into it or in it, counted in a register, so ``addr.ready`` waits for no
        # adder over the FIFO's level and the stages (the ULX3S core's critical path at
        # 83 MHz with some placements, 12.4 ns, into the weight sequencer).
        credits = Signal(range(depth + 1), init=depth)
        popped = self.data.valid & self.data.ready
        m.d.sync += credits.eq(credits - taken + popped)
        m.d.comb += self.addr.ready.eq(credits != 0)
        inflight_tag = Signal.like(self.addr.payload.tag)
        if self._address_stage:
            staged = Signal()     # an address waits in the register, read in this cycle
            staged_payload = Signal.like(self.addr.payload)
            m.d.sync += [staged.eq(taken), staged_payload.eq(self.addr.payload)]
            m.d.comb += issue.eq(staged)
            read = staged_payload
        else:
            m.d.comb += issue.eq(taken)
            read = self.addr.payload
        m.d.comb += [
            taken.eq(self.addr.valid & self.addr.ready),
            self.port_addr.eq(read.addr),
            self.port_en.eq(issue),
        ]
        m.d.sync += [inflight.eq(issue), inflight_tag.eq(read.tag)]
        word = Signal(self._data_layout)
        m.d.comb += [word.data.eq(self.port_data), word.tag.eq(inflight_tag)]
        if self._data_stage:
            m.d.sync += [held.eq(inflight), held_word.eq(word)]
            m.d.comb += [fifo.w_en.eq(held), fifo.w_data.eq(held_word)]
        else:
            m.d.comb += [fifo.w_en.eq(inflight), fifo.w_data.eq(word)]
        m.d.comb += [
            self.data.valid.eq(fifo.r_rdy),
            self.data.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.data.ready),
        ]
        return m
