"""GEMM post-processing: the engine's result rows to buffer words (raw, requantized, activated)."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import Bank, PostOp
from ..matmul.engine import result_row_layout
from ..numerics.requantizer import Requantizer
from .write_port import buffer_write_layout


__all__ = ["param_set_layout", "PostProcessor"]


def param_set_layout(lanes):
    """One output tile's requantization parameters, as 10 consecutive buffer words."""
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(32), lanes),
        "multiplier": data.ArrayLayout(unsigned(32), lanes),
        "shift": data.ArrayLayout(signed(8), lanes),
        "zero_point": data.ArrayLayout(signed(8), lanes),
    })


class PostProcessor(wiring.Component):
    """Writes a GEMM's ``m x n_tiles`` result rows (tile-major, as the engine emits them).

    - ``RAW``: each row's ``lanes`` 32-bit values as 4 words (little-endian) at
      ``out_base + r * out_stride + 4 * j + q``;
    - ``REQUANT``: ``lanes`` requantizers (one per column) with tile j's parameters
      from ``params`` (one transfer per tile, taken after its last row), one word at
      ``out_base + r * out_stride + j``;
    - ``REQUANT_ACT``: the same, then the activation table (an
      :class:`~rtl.activation.Activation` outside, through ``act_i`` and ``act_o``).

    Configure while idle, pulse ``start``; ``done`` pulses after the last word is
    accepted on ``write``. ``engine_error`` pulses for a row the engine flagged,
    ``shift_error`` for a requantization with a shift out of range, ``saturations``
    counts the lanes that saturated in a written word.
    """

    def __init__(self, *, lanes, max_rows):
        self._lanes = lanes
        word_bits = 8 * lanes
        super().__init__({
            "start": In(1),
            "post": In(PostOp),
            "out_bank": In(Bank),
            "out_base": In(16),
            "out_stride": In(16),
            "m": In(16),
            "n_tiles": In(16),
            "rows": In(stream.Signature(result_row_layout(lanes))),
            "params": In(stream.Signature(param_set_layout(lanes))),
            "act_i": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "act_o": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "write": Out(stream.Signature(buffer_write_layout(word_bits))),
            "done": Out(1),
            "engine_error": Out(1),
            "shift_error": Out(1),
            "saturations": Out(range(lanes + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        raw = self.post == PostOp.RAW
        activate = self.post == PostOp.REQUANT_ACT

        # -- Output address sequence (rows in tile-major order, 4 words per raw row) -------
        row = Signal(16)
        tile = Signal(16)
        row_addr = Signal(16)
        tile_offset = Signal(16)
        quarter = Signal(2)
        running = Signal()
        word_sent = Signal()
        m.d.comb += [
            self.write.payload.bank.eq(self.out_bank),
            self.write.payload.addr.eq(row_addr + tile_offset + quarter),
            word_sent.eq(self.write.valid & self.write.ready),
        ]
        last_word = (quarter == 3) | ~raw
        last_row = row == self.m - 1
        with m.If(self.start):
            m.d.sync += [row.eq(0), tile.eq(0), row_addr.eq(self.out_base), tile_offset.eq(0),
                         quarter.eq(0), running.eq(1)]
        with m.Elif(word_sent):
            with m.If(~last_word):
                m.d.sync += quarter.eq(quarter + 1)
            with m.Else():
                m.d.sync += quarter.eq(0)
                with m.If(~last_row):
                    m.d.sync += [row.eq(row + 1), row_addr.eq(row_addr + self.out_stride)]
                with m.Else():
                    m.d.sync += [row.eq(0), row_addr.eq(self.out_base), tile.eq(tile + 1),
                                 tile_offset.eq(tile_offset + Mux(raw, 4, 1))]
                    with m.If(tile == self.n_tiles - 1):
                        m.d.sync += running.eq(0)
                        m.d.comb += self.done.eq(1)

        # -- Input: tile rows counted to release each tile's parameters -----------------------
        in_row = Signal(16)
        row_taken = Signal()
        m.d.comb += row_taken.eq(self.rows.valid & self.rows.ready)
        with m.If(self.start):
            m.d.sync += in_row.eq(0)
        with m.Elif(row_taken):
            m.d.sync += in_row.eq(in_row + 1)
            with m.If(in_row == self.m - 1):
                m.d.sync += in_row.eq(0)
        m.d.comb += self.engine_error.eq(row_taken & self.rows.payload.error)

        # -- RAW: a row becomes 4 words -------------------------------------------------------
        held = Signal(data.ArrayLayout(32, lanes))
        held_valid = Signal()
        per_word = lanes // 4
        with m.If(raw):
            m.d.comb += self.rows.ready.eq(~held_valid | (word_sent & (quarter == 3)))
            with m.If(row_taken):
                m.d.sync += [held.eq(self.rows.payload.values), held_valid.eq(1)]
            with m.Elif(word_sent & (quarter == 3)):
                m.d.sync += held_valid.eq(0)
            words = [Cat(*(held[q * per_word + i] for i in range(per_word))) for q in range(4)]
            m.d.comb += self.write.valid.eq(held_valid)
            with m.Switch(quarter):
                for q in range(4):
                    with m.Case(q):
                        m.d.comb += self.write.payload.data.eq(words[q])

        # -- REQUANT(_ACT): one requantizer per column, in lockstep ----------------------------
        requantizers = []
        for c in range(lanes):
            rq = Requantizer()
            m.submodules[f"requantizer_{c}"] = rq
            requantizers.append(rq)
        lead = requantizers[0]
        feed = ~raw & self.rows.valid & self.params.valid
        with m.If(~raw):
            m.d.comb += self.rows.ready.eq(lead.i.ready & self.params.valid)
            m.d.comb += self.params.ready.eq(row_taken & (in_row == self.m - 1))
        values = Signal(data.ArrayLayout(signed(8), lanes))
        saturated = Signal(lanes)
        shift_error = Signal(lanes)
        for c, rq in enumerate(requantizers):
            m.d.comb += [
                rq.i.valid.eq(feed),
                rq.i.payload.accumulator.eq(self.rows.payload.values[c]),
                rq.i.payload.bias.eq(self.params.payload.bias[c]),
                rq.i.payload.multiplier.eq(self.params.payload.multiplier[c]),
                rq.i.payload.shift.eq(self.params.payload.shift[c]),
                rq.i.payload.zero_point.eq(self.params.payload.zero_point[c]),
                values[c].eq(rq.o.payload.value),
                saturated[c].eq(rq.o.payload.saturated),
                shift_error[c].eq(rq.o.payload.error),
            ]
        rq_valid = lead.o.valid
        rq_ready = Signal()
        for rq in requantizers:
            m.d.comb += rq.o.ready.eq(rq_ready)
        rq_taken = rq_valid & rq_ready
        m.d.comb += [
            self.shift_error.eq(rq_taken & (shift_error != 0)),
            self.saturations.eq(Mux(rq_taken, sum(saturated[c] for c in range(lanes)), 0)),
        ]
        with m.If(~raw):
            with m.If(activate):
                m.d.comb += [
                    self.act_i.valid.eq(rq_valid),
                    self.act_i.payload.eq(values),
                    rq_ready.eq(self.act_i.ready),
                    self.write.valid.eq(self.act_o.valid),
                    self.write.payload.data.eq(self.act_o.payload),
                    self.act_o.ready.eq(self.write.ready),
                ]
            with m.Else():
                m.d.comb += [
                    self.write.valid.eq(rq_valid),
                    self.write.payload.data.eq(values),
                    rq_ready.eq(self.write.ready),
                ]
        return m

