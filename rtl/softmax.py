"""Softmax over rows of INT8 attention scores, to UINT8 probabilities at scale 1/256.

Per row, over its unmasked elements (bit-exact with :func:`sim.golden.softmax.softmax`)::

    m    = max x_j                                   INT8, integer compare
    e_j  = table[m - x_j]                            m - x_j in 0..255; UINT16 table
    S    = sum e_j                                   exact: W = bit_length(max_length * 0xFFFF) bits
    b    = bit_length(S)                             S = 0 (e.g. a fully masked row): outputs 0
    R    = floor(2**(b + 16) / S)                    18 bits, in (2**16, 2**17]
    p_j  = (((e_j * R) >> (b + 7)) + 1) >> 1         e_j * R: 34 bits; round to nearest, ties up
    out  = min(p_j, 255)                             UINT8 at scale 1/256

``p_j`` is ``256 * e_j / S`` with one reciprocal per row (``R * 2**-(b + 16)`` is
``1/S`` truncated to 17 significant bits) and a single rounding. An output of
exactly 1.0 (256, only when one element holds the whole sum) is **clamped** to
255 so every output stays UINT8 for the UINT8 x INT8 matmul mode.

The table is written by the host for the per-tensor score scale
(:func:`sim.golden.softmax.exp_table`: ``round(exp(-d * scale) * 2**15)``); since
``m - x_j`` takes only 256 values, the table is exact with respect to the golden
model. Its power-on content is all zeros (every row then yields zeros).
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2


__all__ = ["EXP_BITS", "RECIPROCAL_FRACTION", "ROW_SLOTS", "table_entry_layout", "row_command_layout",
           "score_lanes_layout", "probability_lanes_layout", "Softmax"]


EXP_BITS = 16
RECIPROCAL_FRACTION = 16
#: Rows in flight at once: each has a slot of the score buffer (ingest, sum, divide, emit).
ROW_SLOTS = 4
#: Quotient bits the divider produces per cycle (two restoring steps in one cycle).
QUOTIENT_BITS_PER_CYCLE = 2
#: Cycles the divider holds a row: one to normalize the sum, one per two quotient bits (of
#: RECIPROCAL_FRACTION + 2), one to hand off.
DIVIDER_CYCLES = (RECIPROCAL_FRACTION + 2) // QUOTIENT_BITS_PER_CYCLE + 2
assert (RECIPROCAL_FRACTION + 2) % QUOTIENT_BITS_PER_CYCLE == 0


def table_entry_layout():
    """One write into the exponential table: ``table[index] = value``."""
    return data.StructLayout({"index": unsigned(8), "value": unsigned(EXP_BITS)})


def row_command_layout(max_length):
    """A row descriptor. ``count`` elements of the row are streamed; element ``j`` is
    masked iff ``j >= length`` or (``causal`` and ``j > row + offset``)."""
    width = ceil_log2(max_length + 1)
    return data.StructLayout({
        "count": unsigned(width),
        "length": unsigned(width),
        "causal": 1,
        "row": unsigned(16),
        "offset": signed(16),
    })


def score_lanes_layout(lanes):
    return data.ArrayLayout(signed(8), lanes)


def probability_lanes_layout(lanes):
    return data.StructLayout({
        "probs": data.ArrayLayout(unsigned(8), lanes),
        "last": 1,
        "error": 1,
    })


class Softmax(wiring.Component):
    """Row softmax of INT8 scores with masking, ``lanes`` elements per cycle.

    Computes the function in this module's docstring.

    **Protocol.** A row is a descriptor on ``cmd`` and ``ceil(count / lanes)``
    transfers on ``i`` (element ``j`` in lane ``j % lanes`` of transfer
    ``j // lanes``; lanes past ``count`` in the last transfer are ignored). It
    gives ``ceil(max(count, 1) / lanes)`` transfers on ``o`` in the same order,
    ``last`` set on the final one; masked elements and lanes past ``count`` are 0.
    ``count`` may be shorter than ``max_length`` so short rows stream fast.

    **Errors.** A descriptor with ``count == 0``, ``count > max_length`` or
    ``length > count`` is an error row: it still consumes exactly its ``count``
    input elements (so the input stream stays in step), and produces
    ``max(count, 1)`` output elements, all 0, with ``error`` set on each of its
    transfers. It never hangs.

    **Table.** ``table`` writes ``table[index] = value``. Writes are accepted only
    when no row is in flight (``table.ready`` is low otherwise), and no new
    descriptor is accepted while ``table.valid`` is high: load a layer's table
    before its rows, and the next layer's table only after the previous layer's
    last output.

    **Pipeline.** Four row stages, each holding one row, hand rows on with no
    bubble; rows live in one of :data:`ROW_SLOTS` slots of a score buffer
    (``Memory``, ``ROW_SLOTS * 2**ceil_log2(ceil(max_length / lanes))`` words of
    ``lanes`` INT8 scores, one write and two read ports)::

        row k:   | A: ingest, max | B: exp, sum | D: 1/S | C: exp, * R, round -> o |
        row k+1:                  | A           | B               | D | C          |
        row k+2:                                | A               | B ...

    - A stores the transfers in the row's slot and keeps the running max of the
      unmasked lanes (T = ``ceil(count / lanes)`` cycles);
    - B reads the slot, looks ``m - x`` up in the table (one read port per lane)
      and sums exactly (T cycles, 2 more for the reads, 1 to hand off);
    - D normalizes ``S`` and computes ``R`` by restoring division, two quotient bits
      per cycle (:data:`DIVIDER_CYCLES` = 11 cycles);
    - C reads the slot again, looks up the table again (a second read port per
      lane, so no buffer of exponentials is needed), multiplies by ``R``, rounds
      and clamps (T cycles, 4 pipeline registers to ``o``).

    **Throughput.** ``lanes`` elements per cycle in steady state, with no bubble
    between back-to-back rows of ``T >= 24`` transfers (tested; measured 1.0
    element per cycle on 512-element rows, ``docs/softmax.md``); rows shorter
    than that are limited by the divider to one row per :data:`DIVIDER_CYCLES`
    (11) cycles.
    **Latency** (empty unit, no stalls) from the first input transfer of a row to
    its first output: ``row_latency(count)`` = ``2 * T + 7 + DIVIDER_CYCLES`` (18) cycles; :attr:`latency`
    is that for a ``max_length`` row.

    Backpressure on ``o`` stops only stage C; A and B continue until their rows
    need the next stage. ``i``, ``cmd`` and ``table`` stalls just leave bubbles.

    Parameters
    ----------
    max_length : int
        Longest row (default 512, MiniLM's maximum sequence length).
    lanes : int
        Elements per transfer and per cycle.

    Members
    -------
    table : In(stream.Signature(table_entry_layout()))
        Exponential table writes.
    cmd : In(stream.Signature(row_command_layout(max_length)))
        Row descriptors: ``count``, ``length``, ``causal``, ``row``, ``offset``.
    i : In(stream.Signature(ArrayLayout(signed(8), lanes)))
        INT8 scores.
    o : Out(stream.Signature(probability_lanes_layout(lanes)))
        UINT8 probabilities (scale 1/256), ``last`` on a row's final transfer,
        ``error`` on every transfer of an error row.
    """

    def __init__(self, max_length=512, lanes=1):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise TypeError(f"Maximum length must be a positive integer, not {max_length!r}")
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise TypeError(f"Lane count must be a positive integer, not {lanes!r}")
        if max_length >= 1 << 16:
            raise ValueError(f"Maximum length must be less than 65536, not {max_length!r}")
        if lanes > max_length:
            raise ValueError(f"Lane count must not exceed the maximum length {max_length}, "
                             f"not {lanes!r}")
        self._max_length = max_length
        self._lanes = lanes
        super().__init__({
            "table": In(stream.Signature(table_entry_layout())),
            "cmd": In(stream.Signature(row_command_layout(max_length))),
            "i": In(stream.Signature(score_lanes_layout(lanes))),
            "o": Out(stream.Signature(probability_lanes_layout(lanes))),
        })

    max_length = property(lambda self: self._max_length)
    lanes = property(lambda self: self._lanes)

    @property
    def sum_width(self):
        """Width of the exact row sum ``S``."""
        return (self._max_length * ((1 << EXP_BITS) - 1)).bit_length()

    def row_latency(self, count):
        """Cycles from a row's first input transfer to its first output (empty unit, no stalls)."""
        transfers = max(1, -(-count // self._lanes))
        return 2 * transfers + 7 + DIVIDER_CYCLES

    @property
    def latency(self):
        """:meth:`row_latency` of a ``max_length`` row."""
        return self.row_latency(self._max_length)

    def elaborate(self, platform):
        m = Module()
        lanes, max_length = self._lanes, self._max_length
        W = self.sum_width
        F = RECIPROCAL_FRACTION
        count_width = ceil_log2(max_length + 1)
        slot_words = -(-max_length // lanes)
        addr_bits = ceil_log2(slot_words)
        # Element counters run past count by up to lanes - 1.
        j_shape = unsigned(count_width + ceil_log2(lanes) + 1)
        idx_shape = unsigned(count_width + 1)

        token_layout = data.StructLayout({
            "slot": range(ROW_SLOTS),
            "count": unsigned(count_width),    # output elements: max(count, 1)
            "limit": unsigned(count_width),    # unmasked elements are j < limit
            "max": signed(8),
            "error": 1,
            "sum": unsigned(W),
            "reciprocal": unsigned(F + 2),
            "shift": unsigned(6),              # b + F - 9
            "zero": 1,                         # every output is 0
        })

        m.submodules.scores = scores = Memory(shape=score_lanes_layout(lanes),
                                              depth=ROW_SLOTS << addr_bits, init=[])
        score_write = scores.write_port()
        score_read_b = scores.read_port()
        score_read_c = scores.read_port()
        # The exponential table, one copy per read port (2 x lanes), all written together:
        # a memory with one read port maps onto one block RAM (Yosys' ECP5 memory mapper
        # gives up on 32 read ports of one memory).
        table_writes, table_reads = [], []
        for copy in range(2 * lanes):
            table = Memory(shape=unsigned(EXP_BITS), depth=256, init=[])
            m.submodules[f"exp_table_{copy}"] = table
            table_writes.append(table.write_port())
            table_reads.append(table.read_port())
        table_read_b, table_read_c = table_reads[:lanes], table_reads[lanes:]

        def address(slot, index):
            return Cat(index[:addr_bits], slot)

        def lane_mask(j, limit):
            return Cat(*[(j + lane) < limit for lane in range(lanes)])

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # -- Stage registers and hand-off conditions -------------------------------------------
        a_full, b_full, t_full, t_complete, d_full, c_full = (
            Signal(name=n) for n in ("a_full", "b_full", "t_full", "t_complete", "d_full", "c_full"))
        a_tok, b_tok, t_tok, d_tok, c_tok = (
            Signal(token_layout, name=n) for n in ("a_tok", "b_tok", "t_tok", "d_tok", "c_tok"))
        a_in_count = Signal(unsigned(count_width))   # input elements to consume
        a_j, b_j, c_j = (Signal(j_shape, name=n) for n in ("a_j", "b_j", "c_j"))
        a_idx, b_idx, c_idx = (Signal(idx_shape, name=n) for n in ("a_idx", "b_idx", "c_idx"))
        d_step = Signal(range(DIVIDER_CYCLES))
        in_flight = Signal(range(ROW_SLOTS + 1))
        next_slot = Signal(range(ROW_SLOTS))

        cmd_fire = Signal()
        i_fire = Signal()
        a_finishing = Signal()
        b_last, b_issue, b_done, b_take = Signal(), Signal(), Signal(), Signal()
        t_free, d_done, d_take = Signal(), Signal(), Signal()
        c_last, c_issue, c_done, c_take = Signal(), Signal(), Signal(), Signal()

        a_last = (a_j + lanes) >= a_in_count
        m.d.comb += [
            self.i.ready.eq(a_full & (a_j < a_in_count)),
            i_fire.eq(self.i.valid & self.i.ready),
            a_finishing.eq(a_full & ((a_j >= a_in_count) | (a_last & self.i.valid))),

            b_last.eq((b_j + lanes) >= b_tok.count),
            t_free.eq(~t_full | d_take),
            b_issue.eq(b_full & (~b_last | t_free)),
            b_done.eq(b_issue & b_last),
            b_take.eq(a_finishing & (~b_full | b_done)),

            d_done.eq(d_full & (d_step == DIVIDER_CYCLES - 1)),
            c_last.eq((c_j + lanes) >= c_tok.count),
            c_issue.eq(c_full & advance),
            c_done.eq(c_issue & c_last),
            c_take.eq(d_done & (~c_full | c_done)),
            d_take.eq(t_full & t_complete & (~d_full | c_take)),

            self.cmd.ready.eq((~a_full | b_take) & (in_flight < ROW_SLOTS) & ~self.table.valid),
            cmd_fire.eq(self.cmd.valid & self.cmd.ready),
        ]

        # -- Stage A: descriptor in, scores into the row's slot, running max --------------------
        cmd = self.cmd.payload
        cmd_error = Signal()
        causal_limit = Signal(signed(19))
        new_limit = Signal(unsigned(count_width))
        m.d.comb += [
            cmd_error.eq((cmd.count == 0) | (cmd.count > max_length) | (cmd.length > cmd.count)),
            causal_limit.eq(cmd.row + cmd.offset + 1),
        ]
        with m.If(cmd_error):
            m.d.comb += new_limit.eq(0)
        with m.Elif(cmd.causal & (causal_limit < 0)):
            m.d.comb += new_limit.eq(0)
        with m.Elif(cmd.causal & (causal_limit < cmd.length)):
            m.d.comb += new_limit.eq(causal_limit)
        with m.Else():
            m.d.comb += new_limit.eq(cmd.length)

        a_mask = Signal(lanes)
        m.d.comb += a_mask.eq(lane_mask(a_j, a_tok.limit))
        # The max over the transfer's unmasked lanes and the row so far: a chain of compares.
        running = a_tok.max
        for lane in range(lanes):
            lane_max = Signal(signed(8), name=f"a_max_{lane}")
            m.d.comb += lane_max.eq(Mux(a_mask[lane] & (self.i.payload[lane] > running),
                                        self.i.payload[lane], running))
            running = lane_max
        a_max_next = Signal(signed(8))
        m.d.comb += a_max_next.eq(Mux(i_fire, running, a_tok.max))
        m.d.comb += [
            score_write.addr.eq(address(a_tok.slot, a_idx)),
            score_write.data.eq(self.i.payload),
            score_write.en.eq(i_fire & (a_idx < slot_words)),
        ]
        with m.If(i_fire):
            m.d.sync += [a_j.eq(a_j + lanes), a_idx.eq(a_idx + 1), a_tok.max.eq(a_max_next)]
        with m.If(cmd_fire):
            m.d.sync += [
                a_full.eq(1),
                a_in_count.eq(cmd.count),
                a_j.eq(0),
                a_idx.eq(0),
                a_tok.slot.eq(next_slot),
                a_tok.count.eq(Mux(cmd.count == 0, 1, cmd.count)),
                a_tok.limit.eq(new_limit),
                a_tok.max.eq(-128),
                a_tok.error.eq(cmd_error),
                next_slot.eq(Mux(next_slot == ROW_SLOTS - 1, 0, next_slot + 1)),
            ]
        with m.Elif(b_take):
            m.d.sync += a_full.eq(0)
        m.d.sync += in_flight.eq(in_flight + cmd_fire - c_done)

        # -- Stage B: exp(x - max) from the table, exact sum ------------------------------------
        with m.If(b_issue):
            m.d.sync += [b_j.eq(b_j + lanes), b_idx.eq(b_idx + 1)]
        with m.If(b_take):
            m.d.sync += [b_full.eq(1), b_tok.eq(a_tok), b_tok.max.eq(a_max_next), b_j.eq(0), b_idx.eq(0)]
        with m.Elif(b_done):
            m.d.sync += b_full.eq(0)
        m.d.comb += [score_read_b.addr.eq(address(b_tok.slot, b_idx)), score_read_b.en.eq(1)]

        tag_b_layout = data.StructLayout({"valid": 1, "mask": lanes, "max": signed(8),
                                          "first": 1, "last": 1})
        b1_tag = Signal(tag_b_layout)
        b2_tag = Signal(tag_b_layout)
        m.d.sync += [
            b1_tag.valid.eq(b_issue),
            b1_tag.mask.eq(lane_mask(b_j, b_tok.limit)),
            b1_tag.max.eq(b_tok.max),
            b1_tag.first.eq(b_j == 0),
            b1_tag.last.eq(b_last),
            b2_tag.eq(b1_tag),
        ]
        for lane in range(lanes):
            m.d.comb += [
                table_read_b[lane].addr.eq((b1_tag.max - score_read_b.data[lane])[:8]),
                table_read_b[lane].en.eq(1),
            ]
        b2_lane_sum = Signal(unsigned(EXP_BITS + ceil_log2(lanes + 1)))
        m.d.comb += b2_lane_sum.eq(sum(Mux(b2_tag.mask[lane], table_read_b[lane].data, 0)
                                       for lane in range(lanes)))
        acc = Signal(unsigned(W))
        b2_total = Signal(unsigned(W))
        m.d.comb += b2_total.eq(Mux(b2_tag.first, 0, acc) + b2_lane_sum)
        with m.If(b2_tag.valid):
            m.d.sync += acc.eq(b2_total)
            with m.If(b2_tag.last):
                m.d.sync += [t_tok.sum.eq(b2_total), t_complete.eq(1)]

        # Stage B's tail: the row waits here for its last table reads and its sum.
        with m.If(b_done):
            m.d.sync += [t_full.eq(1), t_complete.eq(0), t_tok.eq(b_tok)]
        with m.Elif(d_take):
            m.d.sync += [t_full.eq(0), t_complete.eq(0)]

        # -- Stage D: R = floor(2**(b + F) / S) by restoring division ----------------------------
        d_bits = Signal(range(W + 1))
        for k in range(W):
            with m.If(d_tok.sum[k]):
                m.d.comb += d_bits.eq(k + 1)
        d_norm_shift = Signal(range(W + 1))
        m.d.comb += d_norm_shift.eq(W - d_bits)
        d_divisor = Signal(unsigned(W))
        d_remainder = Signal(unsigned(W + 1))
        d_quotient = Signal(unsigned(F + 2))
        d_trial = Signal(unsigned(W + 2))
        d_first_bit, d_second_bit = Signal(), Signal()
        d_first_remainder = Signal(unsigned(W + 1))
        d_second_trial = Signal(unsigned(W + 2))
        d_second_remainder = Signal(unsigned(W + 1))
        m.d.comb += [
            d_trial.eq((d_remainder << 1) - d_divisor),
            d_first_bit.eq(~d_trial[W + 1]),
            d_first_remainder.eq(Mux(d_first_bit, d_trial, d_remainder << 1)),
            d_second_trial.eq((d_first_remainder << 1) - d_divisor),
            d_second_bit.eq(~d_second_trial[W + 1]),
            d_second_remainder.eq(Mux(d_second_bit, d_second_trial, d_first_remainder << 1)),
        ]
        with m.If(d_take):
            m.d.sync += [d_full.eq(1), d_tok.eq(t_tok), d_step.eq(0)]
        with m.Elif(c_take):
            m.d.sync += d_full.eq(0)
        with m.Elif(d_full & ~d_done):
            m.d.sync += d_step.eq(d_step + 1)
            with m.If(d_step == 0):
                # Normalize: divisor in [2**(W-1), 2**W); the numerator 2**(W+F) has
                # its top bits 2**(W-2) < divisor already shifted into the remainder.
                m.d.sync += [
                    d_divisor.eq(d_tok.sum << d_norm_shift),
                    d_remainder.eq(1 << (W - 2)),
                    d_quotient.eq(0),
                    d_tok.shift.eq(d_bits + (F - 9)),
                    d_tok.zero.eq((d_tok.sum == 0) | d_tok.error),
                ]
            with m.Elif(d_step <= (F + 2) // QUOTIENT_BITS_PER_CYCLE):
                # two restoring steps: each bit is 1 iff 2 * remainder >= divisor
                m.d.sync += [d_remainder.eq(d_second_remainder),
                             d_quotient.eq(Cat(d_second_bit, d_first_bit, d_quotient))]

        # -- Stage C: exp again, times R, round, clamp, out --------------------------------------
        with m.If(c_issue):
            m.d.sync += [c_j.eq(c_j + lanes), c_idx.eq(c_idx + 1)]
        with m.If(c_take):
            m.d.sync += [c_full.eq(1), c_tok.eq(d_tok), c_tok.reciprocal.eq(d_quotient),
                         c_j.eq(0), c_idx.eq(0)]
        with m.Elif(c_done):
            m.d.sync += c_full.eq(0)
        m.d.comb += [score_read_c.addr.eq(address(c_tok.slot, c_idx)), score_read_c.en.eq(advance)]

        tag_c_layout = data.StructLayout({
            "valid": 1, "mask": lanes, "max": signed(8), "last": 1, "error": 1, "zero": 1,
            "reciprocal": unsigned(F + 2), "shift": unsigned(6),
        })
        c1_tag = Signal(tag_c_layout)
        c2_tag = Signal(tag_c_layout)
        c3_tag = Signal(tag_c_layout)
        c3_products = Signal(data.ArrayLayout(unsigned(EXP_BITS + F + 2), lanes))
        with m.If(advance):
            m.d.sync += [
                c1_tag.valid.eq(c_issue),
                c1_tag.mask.eq(lane_mask(c_j, c_tok.limit)),
                c1_tag.max.eq(c_tok.max),
                c1_tag.last.eq(c_last),
                c1_tag.error.eq(c_tok.error),
                c1_tag.zero.eq(c_tok.zero),
                c1_tag.reciprocal.eq(c_tok.reciprocal),
                c1_tag.shift.eq(c_tok.shift),
                c2_tag.eq(c1_tag),
                c3_tag.eq(c2_tag),
            ]
            for lane in range(lanes):
                m.d.sync += c3_products[lane].eq(table_read_c[lane].data * c2_tag.reciprocal)
        for lane in range(lanes):
            m.d.comb += [
                table_read_c[lane].addr.eq((c1_tag.max - score_read_c.data[lane])[:8]),
                table_read_c[lane].en.eq(advance),
            ]
        with m.If(advance):
            m.d.sync += [
                self.o.valid.eq(c3_tag.valid),
                self.o.payload.last.eq(c3_tag.last),
                self.o.payload.error.eq(c3_tag.error),
            ]
            for lane in range(lanes):
                rounded = Signal(unsigned(EXP_BITS + F + 2), name=f"c3_rounded_{lane}")
                m.d.comb += rounded.eq(((c3_products[lane] >> c3_tag.shift) + 1) >> 1)
                value = Mux(rounded > 255, 255, rounded[:8])
                m.d.sync += self.o.payload.probs[lane].eq(
                    Mux(c3_tag.mask[lane] & ~c3_tag.zero, value, 0))

        # -- Table writes: only with no row in flight ---------------------------------------------
        idle = (in_flight == 0) & ~c1_tag.valid & ~c2_tag.valid
        m.d.comb += [
            self.table.ready.eq(idle),
            *[w.addr.eq(self.table.payload.index) for w in table_writes],
            *[w.data.eq(self.table.payload.value) for w in table_writes],
            *[w.en.eq(self.table.valid & idle) for w in table_writes],
        ]
        return m
