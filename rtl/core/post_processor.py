"""GEMM post-processing: the engine's result rows to buffer words (raw, requantized, activated)."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import PARAM_WORDS, PARAM_WORDS_WIDE, Bank, ConvertTarget, PostOp
from ..matmul.engine import result_row_layout
from ..numerics.fp32_converter import FP32Converter
from ..numerics.requantizer import Requantizer
from .write_port import buffer_write_layout


__all__ = ["param_words_layout", "param_set_layout", "decode_param_words", "PostProcessor"]


def param_words_layout(lanes, wide):
    """One output tile's requantization parameters as they lie in WGT: :data:`~rtl.isa.PARAM_WORDS`
    (10) consecutive words, or :data:`~rtl.isa.PARAM_WORDS_WIDE` (13) with ``wide`` (16-bit zero
    points and the residual multipliers ``d``)."""
    fields = {
        "bias": data.ArrayLayout(signed(32), lanes),
        "multiplier": data.ArrayLayout(unsigned(32), lanes),
        "shift": data.ArrayLayout(signed(8), lanes),
        "zero_point": data.ArrayLayout(signed(16 if wide else 8), lanes),
    }
    if wide:
        fields["residual_multiplier"] = data.ArrayLayout(unsigned(16), lanes)
    layout = data.StructLayout(fields)
    assert layout.size == (PARAM_WORDS_WIDE if wide else PARAM_WORDS) * 8 * lanes
    return layout


def param_set_layout(lanes):
    """One output tile's parameters as the post-processor takes them (either WGT format,
    decoded by :func:`decode_param_words`)."""
    return param_words_layout(lanes, wide=True)


def decode_param_words(m, words, wide, lanes):
    """A :func:`param_set_layout` value from the last :data:`~rtl.isa.PARAM_WORDS_WIDE` words
    read (``words``, oldest in the low bits): all 13 of them if ``wide``, else the newest 10
    (an 8-bit zero point, sign-extended, and ``d`` = 0)."""
    word_bits = 8 * lanes
    full = data.View(param_words_layout(lanes, True), words)
    narrow = data.View(param_words_layout(lanes, False),
                       words[(PARAM_WORDS_WIDE - PARAM_WORDS) * word_bits:])
    decoded = Signal(param_set_layout(lanes))
    m.d.comb += [
        decoded.bias.eq(Mux(wide, full.bias.as_value(), narrow.bias.as_value())),
        decoded.multiplier.eq(Mux(wide, full.multiplier.as_value(), narrow.multiplier.as_value())),
        decoded.shift.eq(Mux(wide, full.shift.as_value(), narrow.shift.as_value())),
        decoded.residual_multiplier.eq(Mux(wide, full.residual_multiplier.as_value(), 0)),
    ]
    for c in range(lanes):
        m.d.comb += decoded.zero_point[c].eq(Mux(wide, full.zero_point[c], narrow.zero_point[c]))
    return decoded


class PostProcessor(wiring.Component):
    """Writes a GEMM's ``m x n_tiles`` result rows (tile-major, as the engine emits them).

    - ``RAW``: each row's ``lanes`` 32-bit values as 4 words (little-endian) at
      ``out_base + r * out_stride + 4 * j + q``;
    - ``REQUANT``: ``lanes`` requantizers (one per column) with tile j's parameters
      from ``params`` (one transfer per tile, taken after its last row; with ``cls_rows``
      != 0 two per tile, the first taken after row ``cls_rows`` - 1), one word at
      ``out_base + r * out_stride + j``; with ``wide`` INT16 values, two words at
      ``out_base + r * out_stride + 2 * j`` (columns 0 .. lanes / 2 - 1) and the next
      (the rest), little-endian; with ``residual_en`` one ``residual`` word (INT8 per
      column) is taken with every row and ``residual * d`` added to the accumulators;
    - ``REQUANT_ACT``: the same (INT8 only), then the activation table (an
      :class:`~rtl.activation.Activation` outside, through ``act_i`` and ``act_o``);
    - ``CONVERT`` (FP32 rows of the FP8 modes): ``lanes`` :class:`~rtl.numerics.
      fp32_converter.FP32Converter` lanes, each value times ``2**shift`` (tile j's
      parameter ``shift`` per column) to ``target``: E4M3 codes or INT8 values (one word
      per row) or INT16 values (two words, as ``wide``).

    With ``requantize=False`` no requantizer is built: only ``RAW`` works (the compute
    unit rejects the other post ops first); with ``convert=False`` no converter is built
    (the compute unit rejects ``CONVERT``).

    Configure while idle, pulse ``start`` (``m``, ``n_tiles`` and ``cls_rows`` are
    latched then; the rest must stay stable until ``done``); ``done`` pulses after the last word is
    accepted on ``write``. ``engine_error`` pulses the cycle after a row the engine flagged is taken,
    ``shift_error`` for a requantization with a shift out of range, ``saturations``
    counts the lanes that saturated in a written word.
    """

    def __init__(self, *, lanes, max_rows, requantize=True, convert=False):
        self._lanes = lanes
        self._requantize = bool(requantize)
        self._convert = bool(convert) and self._requantize
        word_bits = 8 * lanes
        super().__init__({
            "start": In(1),
            "post": In(PostOp),
            "out_bank": In(Bank),
            "out_base": In(16),
            "out_stride": In(16),
            "m": In(16),
            "n_tiles": In(16),
            "wide": In(1),
            "residual_en": In(1),
            "cls_rows": In(16),
            "target": In(ConvertTarget),
            "rows": In(stream.Signature(result_row_layout(lanes))),
            "params": In(stream.Signature(param_set_layout(lanes))),
            "residual": In(stream.Signature(data.ArrayLayout(signed(8), lanes))),
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
        convert = Signal()
        if self._convert:
            m.d.comb += convert.eq(self.post == PostOp.CONVERT)
        wide = ~raw & Mux(convert, self.target == ConvertTarget.INT16, self.wide)

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
        # The last row, tile and class-0 row, latched at ``start``: the counters compare
        # with registers, not with a subtraction from the configuration inputs.
        m_last = Signal(signed(17))
        tiles_last = Signal(signed(17))
        cls_last_row = Signal(signed(17))
        cls_on = Signal()
        with m.If(self.start):
            m.d.sync += [m_last.eq(self.m - 1), tiles_last.eq(self.n_tiles - 1),
                         cls_last_row.eq(self.cls_rows - 1), cls_on.eq(self.cls_rows != 0)]
        last_word = Mux(raw, quarter == 3, Mux(wide, quarter == 1, 1))
        last_row = row == m_last
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
                                 tile_offset.eq(tile_offset + Mux(raw, 4, Mux(wide, 2, 1)))]
                    with m.If(tile == tiles_last):
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
            with m.If(in_row == m_last):
                m.d.sync += in_row.eq(0)
        # Registered: from the row handshake into the core's error latch it was the ULX3S
        # core's path at 90 MHz with some placements (11.6 ns). A flagged row's words are
        # written after it is taken, so the pulse still comes before ``done``.
        m.d.sync += self.engine_error.eq(row_taken & self.rows.payload.error)

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

        if not self._requantize:
            return m

        # -- REQUANT(_ACT): one requantizer per column, in lockstep ----------------------------
        requantizers = []
        for c in range(lanes):
            rq = Requantizer(extended=True)
            m.submodules[f"requantizer_{c}"] = rq
            requantizers.append(rq)
        lead = requantizers[0]
        converters = []
        if self._convert:
            for c in range(lanes):
                cv = FP32Converter()
                m.submodules[f"converter_{c}"] = cv
                converters.append(cv)
        residual_ok = self.residual.valid | ~self.residual_en
        feed = ~raw & self.rows.valid & self.params.valid & residual_ok
        lane_ready = Mux(convert, converters[0].i.ready, lead.i.ready) if converters else lead.i.ready
        with m.If(~raw):
            m.d.comb += self.rows.ready.eq(lane_ready & self.params.valid & residual_ok)
            # Row classes: the first set of a tile serves rows < cls_rows, popped after
            # row cls_rows - 1; the second the rest, popped after the tile's last row.
            cls_last = cls_on & (in_row == cls_last_row)
            m.d.comb += self.params.ready.eq(row_taken & ((in_row == m_last) | cls_last))
            m.d.comb += self.residual.ready.eq(row_taken & self.residual_en)
        values = Signal(data.ArrayLayout(signed(8), lanes))
        values16 = Signal(data.ArrayLayout(signed(16), lanes))
        saturated = Signal(lanes)
        shift_error = Signal(lanes)
        for c, rq in enumerate(requantizers):
            m.d.comb += [
                rq.i.valid.eq(feed & ~convert),
                rq.i.payload.accumulator.eq(self.rows.payload.values[c]),
                rq.i.payload.bias.eq(self.params.payload.bias[c]),
                rq.i.payload.multiplier.eq(self.params.payload.multiplier[c]),
                rq.i.payload.shift.eq(self.params.payload.shift[c]),
                rq.i.payload.zero_point.eq(self.params.payload.zero_point[c]),
                rq.i.payload.wide.eq(wide),
                rq.i.payload.residual.eq(Mux(self.residual_en, self.residual.payload[c], 0)),
                rq.i.payload.residual_multiplier.eq(self.params.payload.residual_multiplier[c]),
                values[c].eq(rq.o.payload.value),
                values16[c].eq(rq.o.payload.value),
                saturated[c].eq(rq.o.payload.saturated),
                shift_error[c].eq(rq.o.payload.error),
            ]
        rq_valid = Signal()
        rq_ready = Signal()
        m.d.comb += rq_valid.eq(lead.o.valid)
        for rq in requantizers:
            m.d.comb += rq.o.ready.eq(rq_ready)
        if converters:
            # CONVERT: the converters' codes take the requantizers' place on the way out.
            with m.If(convert):
                m.d.comb += rq_valid.eq(converters[0].o.valid)
            for c, cv in enumerate(converters):
                m.d.comb += [
                    cv.i.valid.eq(feed & convert),
                    cv.i.payload.value.eq(self.rows.payload.values[c]),
                    cv.i.payload.shift.eq(self.params.payload.shift[c]),
                    cv.i.payload.target.eq(self.target),
                    cv.o.ready.eq(rq_ready),
                ]
                with m.If(convert):
                    m.d.comb += [
                        values[c].eq(cv.o.payload.code[:8]),
                        values16[c].eq(cv.o.payload.code),
                        saturated[c].eq(cv.o.payload.saturated),
                        shift_error[c].eq(cv.o.payload.shift_error),
                    ]
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
            with m.Elif(wide):
                # Two words per row, the requantizers' outputs held until the second is taken.
                half = lanes // 2
                m.d.comb += [
                    self.write.valid.eq(rq_valid),
                    self.write.payload.data.eq(Mux(quarter[0],
                                                   Cat(*(values16[c] for c in range(half, lanes))),
                                                   Cat(*(values16[c] for c in range(half))))),
                    rq_ready.eq(self.write.ready & quarter[0]),
                ]
            with m.Else():
                m.d.comb += [
                    self.write.valid.eq(rq_valid),
                    self.write.payload.data.eq(values),
                    rq_ready.eq(self.write.ready),
                ]
        return m

