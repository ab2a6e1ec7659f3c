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

    Members
    -------
    addr : In(stream.Signature({"addr", "tag"}))
    data : Out(stream.Signature({"data", "tag"}))
    port_addr, port_en : Out; port_data : In
        To the memory's read port (``transparent_for`` is not needed).
    """

    DEPTH = 4

    def __init__(self, *, addr_width, data_width, tag_width=1):
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
        m.submodules.fifo = fifo = SyncFIFO(width=self._data_layout.size, depth=self.DEPTH)
        inflight = Signal()
        inflight_tag = Signal.like(self.addr.payload.tag)
        issue = Signal()
        m.d.comb += [
            self.addr.ready.eq(fifo.level + inflight < self.DEPTH),
            issue.eq(self.addr.valid & self.addr.ready),
            self.port_addr.eq(self.addr.payload.addr),
            self.port_en.eq(issue),
        ]
        m.d.sync += [inflight.eq(issue), inflight_tag.eq(self.addr.payload.tag)]
        word = Signal(self._data_layout)
        m.d.comb += [
            word.data.eq(self.port_data),
            word.tag.eq(inflight_tag),
            fifo.w_en.eq(inflight),
            fifo.w_data.eq(word),
            self.data.valid.eq(fifo.r_rdy),
            self.data.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.data.ready),
        ]
        return m
