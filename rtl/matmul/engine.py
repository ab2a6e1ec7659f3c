"""Matmul tile engine: the systolic array with weight double buffering, skew, de-skew,
an accumulator buffer and FP32 rounding, behind stream ports."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .array import SystolicArray, check_pe_pairs, product_latency, shared_pe_modules
from .fp32_rounding import ResultRounder
from .mode import MAX_EXACT_K, MatmulMode
from .partial_sum import accumulator_layout, column_to_accumulator, empty_sum, merge_flags
from .pe import ActivationLane


__all__ = ["matmul_pass_layout", "result_row_layout", "MatmulEngine"]


def matmul_pass_layout(max_rows):
    """A pass: what to do with the next weight tile and the next ``rows`` A rows."""
    return data.StructLayout({
        "mode": MatmulMode,
        "rows": unsigned(ceil_log2(max_rows + 1)),
        "accumulate": 1,
        "emit": 1,
    })


def result_row_layout(cols):
    """One row of C: INT32 values or FP32 bit patterns, and an error flag."""
    return data.StructLayout({
        "values": data.ArrayLayout(32, cols),
        "error": 1,
    })


class MatmulEngine(wiring.Component):
    """``C[M x cols] (+)= A[M x K] . W[K x cols]`` for K <= rows, one pass at a time.

    A **pass** is a command on ``cmd`` (mode, ``rows`` = M, ``accumulate``,
    ``emit``), followed on ``weights`` by the pass's weight tile (exactly
    ``rows`` stream transfers of one weight row each: row k holds W[k][0..cols-1];
    pad unused rows and columns with zero codes) and on ``a`` by M activation
    rows (each ``rows`` codes, A[m][0..K-1], zero-padded). The weight tile of the
    next pass loads into the second weight bank while the current one computes,
    so consecutive passes stream with no bubble when M >= 2 * rows + cols + 3.

    Row m's sums go into accumulator row m (``max_rows`` of them): with
    ``accumulate`` they add to what the previous passes left there (longer K, in
    place), without it they replace it. With ``emit`` the pass's result rows come
    out on ``c``, rounded once: INT32 for the integer modes, FP32 (RNE) for the FP8
    modes, in row order. Integer sums and FP8 sums are exact for a total K up to
    :data:`~.mode.MAX_EXACT_K`.

    Errors never hang the engine and never give silent garbage: a pass with an
    invalid mode (6 or 7), an FP8 mode on an engine built without FP8, or an
    accumulation across an integer and an FP8 pass still consumes its weights and
    rows, and its emitted rows have ``error`` set and values 0.

    Backpressure on ``c`` stops the whole datapath (weights keep loading);
    stalls on ``cmd``, ``weights`` and ``a`` just leave bubbles.

    Latency from an A row's transfer to its result row being valid:
    :attr:`latency` = rows + cols + 5 cycles (+ 2 with ``pe_pairs``, + 1 with
    ``pe_multiplier``, + 1 with ``accumulator_stage``, + 1 with ``broadcast_stage``).
    Throughput: one A row per cycle, i.e. rows x cols MACs per cycle.

    Counters (free-running since reset): ``cycle_count`` counts cycles in which
    the engine has work (a pass loaded or loading, or rows in flight),
    ``row_count`` A rows computed, ``stall_count`` cycles stopped by ``c``.

    Parameters
    ----------
    rows, cols : int
        Array size; default 16 x 16.
    max_rows : int
        Accumulator depth: the largest M of a pass.
    fp8 : bool
        Build the FP8 modes (an integer-only engine is much smaller).
    shared_pe_module : bool
        Export the PE once as a Verilog module instantiated R x C times (see
        :class:`~.array.SystolicArray`): for Verilator and synthesis. Amaranth's
        simulator needs the default, ``False``.
    pe_pairs : str, optional
        Integer engines only: pair the PEs on dual 8 x 8 multipliers (one iCE40
        ``SB_MAC16`` per pair; see :class:`~.array.SystolicArray`), with this
        multiplier implementation. Same results, two cycles more latency.
    pe_multiplier : str, optional
        Give every PE a multiplier with its own operand and product registers (the
        ECP5 ``MULT18X18D`` with ``"mult18x18d"``; see
        :class:`~.registered_multiplier.RegisteredMultiplier`), with this
        implementation. Same results, one cycle more latency. Not with ``pe_pairs``.
    accumulator_stage : bool
        Give the accumulator's add a stage of its own: the row read from the
        accumulator buffer is registered, and added and written back a cycle later
        (forwarded from that stage to the next row when both have the same index:
        back-to-back passes of one row). Without it the block RAM's read data, the
        add and the write data are one path (the 8 x 8 engine's critical path on the
        ECP5). Same results, one cycle more latency.
    broadcast_stage : bool
        Drive the nets that reach every PE from registers. ``advance`` (every PE's and
        pipeline register's enable) is a register: the result rows go through a
        two-row output buffer on ``c``, and the datapath advances in a cycle only if
        the buffer held at most one row after the cycle before, so a row that comes out
        always fits. A weight row is written into the array a cycle after its transfer
        (and its pass may start a cycle later). Without it ``c``'s ``ready`` reaches
        every PE's DSP enable, and the weight row every PE's weight register, in the
        cycle they change (the 8 x 8 core's critical paths on the ECP5 at 82 MHz).
        Same results, one cycle more latency; full throughput when ``c`` is always
        ready.

    Members
    -------
    cmd : In(stream.Signature(matmul_pass_layout(max_rows)))
    weights : In(stream.Signature(ArrayLayout(8, cols)))
    a : In(stream.Signature(ArrayLayout(8, rows)))
    c : Out(stream.Signature(result_row_layout(cols)))
    cycle_count, row_count, stall_count : Out(32)
    """

    def __init__(self, *, rows=16, cols=16, max_rows=512, fp8=True, shared_pe_module=False,
                 pe_pairs=None, pe_multiplier=None, accumulator_stage=False,
                 broadcast_stage=False):
        for name, value in (("Row", rows), ("Column", cols), ("Accumulator row", max_rows)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} count must be a positive integer, not {value!r}")
        self._rows = rows
        self._cols = cols
        self._max_rows = max_rows
        self._fp8 = bool(fp8)
        self._shared_pe_module = bool(shared_pe_module)
        self._pe_pairs = pe_pairs
        self._pe_multiplier = pe_multiplier
        self._accumulator_stage = bool(accumulator_stage)
        self._broadcast_stage = bool(broadcast_stage)
        try:
            check_pe_pairs(cols, self._fp8, pe_pairs, pe_multiplier)
        except ValueError:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._acc_layout = accumulator_layout(self._fp8, MAX_EXACT_K)
        super().__init__({
            "cmd": In(stream.Signature(matmul_pass_layout(max_rows))),
            "weights": In(stream.Signature(data.ArrayLayout(8, cols))),
            "a": In(stream.Signature(data.ArrayLayout(8, rows))),
            "c": Out(stream.Signature(result_row_layout(cols))),
            "cycle_count": Out(32),
            "row_count": Out(32),
            "stall_count": Out(32),
        })

    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    max_rows = property(lambda self: self._max_rows)
    fp8 = property(lambda self: self._fp8)

    def verilog_modules(self):
        """``{name: component}`` of the Verilog modules the engine instantiates."""
        if not self._shared_pe_module:
            return {}
        return shared_pe_modules(self._rows, self._fp8, self._pe_pairs, self._pe_multiplier)

    def _array(self):
        return SystolicArray(rows=self._rows, cols=self._cols, fp8=self._fp8,
                             shared_pe_module=self._shared_pe_module, pe_pairs=self._pe_pairs,
                             pe_multiplier=self._pe_multiplier)

    @property
    def latency(self):
        """Cycles from an A row's transfer to its result on ``c`` (no backpressure)."""
        return (self._rows + self._cols + product_latency(self._pe_pairs, self._pe_multiplier)
                + 4 + self._accumulator_stage + self._broadcast_stage)

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        m.submodules.array = array = self._array()
        pass_layout = matmul_pass_layout(self._max_rows)

        # ``advance``: the whole datapath moves on (else it holds). Without
        # ``broadcast_stage``, whenever ``c`` takes its row or has none; with it, from a
        # register (see "Output" below).
        advance = Signal()
        m.d.comb += array.advance.eq(advance)

        # -- Weight loader: one pass's tile into the free bank, a row per transfer ----------
        loaded = Signal(2)        # bank holds a pass, from its load until its rows drained
        pass_ready = Signal(2)    # bank's weights are in, its pass waits to be fed
        feed_done = Signal(2)     # bank's pass has been fed entirely
        pass_info = [Signal(pass_layout, name=f"pass_info_{b}") for b in range(2)]
        # ``rows == 0`` and ``rows == 1`` of each bank's pass and of the rows left to feed,
        # kept in registers: the feeder's handshake then waits for no row-count comparator.
        info_rows_zero = Signal(2)
        info_rows_one = Signal(2)
        load_bank = Signal()
        loading = Signal()
        load_row = Signal(range(rows))
        set_loaded = Signal(2)
        clear_loaded = Signal(2)
        set_ready = Signal(2)
        clear_ready = Signal(2)
        set_done = Signal(2)

        write_row = Signal.like(self.weights.payload)
        write_enable = Signal()
        tile_loaded = Signal(2)   # the bank's last weight row is written in this cycle
        with m.If(~loading):
            m.d.comb += self.cmd.ready.eq(~loaded.bit_select(load_bank, 1))
            with m.If(self.cmd.valid & self.cmd.ready):
                with m.If(load_bank):
                    m.d.sync += [
                        pass_info[1].eq(self.cmd.payload),
                        info_rows_zero[1].eq(self.cmd.payload.rows == 0),
                        info_rows_one[1].eq(self.cmd.payload.rows == 1),
                    ]
                with m.Else():
                    m.d.sync += [
                        pass_info[0].eq(self.cmd.payload),
                        info_rows_zero[0].eq(self.cmd.payload.rows == 0),
                        info_rows_one[0].eq(self.cmd.payload.rows == 1),
                    ]
                m.d.comb += set_loaded.eq(1 << load_bank)
                m.d.sync += [loading.eq(1), load_row.eq(0)]
        with m.Else():
            m.d.comb += [
                self.weights.ready.eq(1),
                write_row.eq(self.weights.payload),
                write_enable.eq(self.weights.valid),
            ]
            with m.If(self.weights.valid):
                m.d.sync += load_row.eq(load_row + 1)
                with m.If(load_row == rows - 1):
                    m.d.sync += [loading.eq(0), load_bank.eq(~load_bank)]
                    m.d.comb += tile_loaded.eq(1 << load_bank)
        write = [write_row, load_row, load_bank, write_enable & loading, tile_loaded]
        if self._broadcast_stage:
            # The row goes into the array (and its pass becomes ready) a cycle later.
            staged = [Signal.like(sig, name=f"{name}_w") for sig, name in
                      zip(write, ("write_row", "write_index", "write_bank", "write_enable",
                                  "tile_loaded"))]
            m.d.sync += [st.eq(sig) for st, sig in zip(staged, write)]
            write = staged
        m.d.comb += [
            array.weight_row.eq(write[0]),
            array.weight_row_index.eq(write[1]),
            array.weight_bank.eq(write[2]),
            array.weight_enable.eq(write[3]),
            set_ready.eq(write[4]),
        ]

        # -- Feeder: the ready pass's A rows into the array, tagged with its bank ------------
        feed_bank = Signal()
        feeding = Signal()
        feed_rows_left = Signal.like(pass_info[0].rows)
        feed_index = Signal(range(self._max_rows))
        current = Signal(pass_layout)
        m.d.comb += current.eq(Mux(feed_bank, pass_info[1], pass_info[0]))
        # ``available`` (the bank being fed has a pass: ``feeding`` or its pass ready) and
        # ``left_zero`` / ``left_one`` (no row / one row of it left to feed) are registers,
        # loaded with their next values: ``a.ready`` is then one gate from registers, and
        # the loop ``a.ready`` -> ``inject`` -> the feeder's state does not also run through
        # ``feed_bank``'s multiplexers (the ULX3S core's path at 90 MHz, 11.3 ns).
        # ``left_zero`` and ``left_one`` matter only while ``available``.
        available = Signal()
        left_zero = Signal()
        left_one = Signal()
        rows_left = Mux(feeding, feed_rows_left, current.rows)
        index = Mux(feeding, feed_index, 0)
        inject = Signal()
        m.d.comb += [
            self.a.ready.eq(advance & available & ~left_zero),
            inject.eq(self.a.valid & self.a.ready),
        ]
        finishing = available & (left_zero | (inject & left_one))
        feeding_next = available & ~finishing
        bank_next = feed_bank ^ finishing
        with m.If(available & ~feeding):
            m.d.comb += clear_ready.eq(1 << feed_bank)
        with m.If(finishing):
            m.d.comb += set_done.eq(1 << feed_bank)
        pass_ready_next = Signal(2)
        m.d.comb += pass_ready_next.eq((pass_ready | set_ready) & ~clear_ready)
        m.d.sync += [
            feeding.eq(feeding_next),
            feed_bank.eq(bank_next),
            # A bank's rows-zero / rows-one bits are written when its pass is taken, long
            # before the pass is ready (its weights load first), so this cycle's are final.
            available.eq(feeding_next | pass_ready_next.bit_select(bank_next, 1)),
            left_zero.eq(Mux(feeding_next, Mux(inject, left_one, left_zero),
                             info_rows_zero.bit_select(bank_next, 1))),
            left_one.eq(Mux(feeding_next, Mux(inject, rows_left == 2, left_one),
                            info_rows_one.bit_select(bank_next, 1))),
            # The row counters are read only while ``feeding``: ``inject`` only selects.
            feed_rows_left.eq(Mux(inject, rows_left - 1, rows_left)),
            feed_index.eq(Mux(inject, index + 1, index)),
        ]

        mode_valid = current.mode.as_value() <= (MatmulMode.E5M2_E4M3.value if self._fp8
                                                 else MatmulMode.UINT8.value)
        is_fp8 = current.mode.as_value() >= MatmulMode.E4M3.value

        # -- Injection register, skew, tag delay line ---------------------------------------
        tag_layout = data.StructLayout({
            "valid": 1, "index": range(self._max_rows), "bank": 1,
            "accumulate": 1, "emit": 1, "fp8": 1, "error": 1,
        })
        s_in_tag = Signal(tag_layout)
        s_in_lanes = Signal(data.ArrayLayout(ActivationLane, rows))
        with m.If(advance):
            m.d.sync += [
                s_in_tag.valid.eq(inject),
                s_in_tag.index.eq(index),
                s_in_tag.bank.eq(feed_bank),
                s_in_tag.accumulate.eq(current.accumulate),
                s_in_tag.emit.eq(current.emit),
                s_in_tag.fp8.eq(is_fp8),
                s_in_tag.error.eq(~mode_valid),
            ]
            for r in range(rows):
                m.d.sync += [
                    s_in_lanes[r].code.eq(self.a.payload[r]),
                    s_in_lanes[r].valid.eq(inject),
                    s_in_lanes[r].bank.eq(feed_bank),
                    s_in_lanes[r].mode.eq(current.mode),
                ]

        def delay(value, cycles, name):
            """``value`` delayed by ``cycles`` advancing cycles."""
            stages = [value]
            for i in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{i + 1}")
                with m.If(advance):
                    m.d.sync += reg.eq(stages[-1])
                stages.append(reg)
            return stages[-1]

        for r in range(rows):
            m.d.comb += array.a[r].eq(delay(s_in_lanes[r], r, f"skew_{r}"))
        d_sums = Signal(data.ArrayLayout(array.sum_layout, cols))
        for c in range(cols):
            m.d.comb += d_sums[c].eq(delay(array.sums[c], cols - 1 - c, f"deskew_{c}"))
        d_tag = Signal(tag_layout)
        m.d.comb += d_tag.eq(delay(s_in_tag, array.column_latency(cols - 1), "tag"))

        # -- Accumulator: read row at D, add and write back at E (or at A, a cycle later,
        #    with ``accumulator_stage``) ----------------------------------------------------
        entry_layout = data.StructLayout({
            "sums": data.ArrayLayout(self._acc_layout, cols), "fp8": 1, "error": 1,
        })
        m.submodules.accumulator = acc = Memory(shape=entry_layout, depth=self._max_rows, init=[])
        acc_write = acc.write_port()
        acc_read = acc.read_port(transparent_for=(acc_write,))
        m.d.comb += [acc_read.addr.eq(d_tag.index), acc_read.en.eq(advance)]

        e_tag = Signal(tag_layout)
        e_sums = Signal(data.ArrayLayout(array.sum_layout, cols))
        with m.If(advance):
            m.d.sync += [e_tag.eq(d_tag), e_sums.eq(d_sums)]
        if self._accumulator_stage:
            # A: the old row in a register; the row that is written in the same cycle
            # (one ahead, same index) is forwarded, since the buffer read it too early.
            # Rows two ahead were written while this one was read (a transparent port).
            w_tag = Signal(tag_layout)
            w_sums = Signal(data.ArrayLayout(array.sum_layout, cols))
            old = Signal(entry_layout)
            w_entry = Signal(entry_layout)
            forward = w_tag.valid & (w_tag.index == e_tag.index)
            with m.If(advance):
                m.d.sync += [w_tag.eq(e_tag), w_sums.eq(e_sums),
                             old.eq(Mux(forward, w_entry, acc_read.data))]
        else:
            w_tag, w_sums, old = e_tag, e_sums, acc_read.data
            w_entry = Signal(entry_layout)
        for c in range(cols):
            base = data.View(self._acc_layout,
                             Mux(w_tag.accumulate, old.sums[c], empty_sum(self._acc_layout)))
            m.d.comb += w_entry.sums[c].value.eq(base.value + column_to_accumulator(w_sums[c]))
            for name, expr in merge_flags(base, w_sums[c]).items():
                m.d.comb += getattr(w_entry.sums[c], name).eq(expr)
        mixed = w_tag.accumulate & ((old.fp8 != w_tag.fp8) | old.error)
        m.d.comb += [
            w_entry.fp8.eq(w_tag.fp8),
            w_entry.error.eq(w_tag.error | mixed),
            acc_write.addr.eq(w_tag.index),
            acc_write.data.eq(w_entry),
            acc_write.en.eq(advance & w_tag.valid),
        ]

        # -- Rounding (F, F+1) and the output register ----------------------------------------
        f_tag = Signal(tag_layout)
        f_entry = Signal(entry_layout)
        with m.If(advance):
            m.d.sync += [f_tag.eq(w_tag), f_entry.eq(w_entry)]
            m.d.sync += f_tag.error.eq(w_entry.error)
        rounders = []
        for c in range(cols):
            rounder = ResultRounder(self._acc_layout.size - 4, fp8=self._fp8)
            m.submodules[f"rounder_{c}"] = rounder
            m.d.comb += [
                rounder.sum.eq(f_entry.sums[c]),
                rounder.fp8.eq(f_entry.fp8),
                rounder.advance.eq(advance),
            ]
            rounders.append(rounder)
        out_tag = Signal(tag_layout)
        m.d.comb += out_tag.eq(delay(f_tag, ResultRounder.latency, "out_tag"))
        out_row = Signal(result_row_layout(cols))
        for c, rounder in enumerate(rounders):
            m.d.comb += out_row.values[c].eq(Mux(out_tag.error, 0, rounder.result))
        m.d.comb += out_row.error.eq(out_tag.error)
        out_valid = out_tag.valid & out_tag.emit

        # -- Output: straight to ``c``, or through the two-row buffer -------------------------
        buffered = Signal(range(3))   # rows in the output buffer
        if self._broadcast_stage:
            slots = [Signal(result_row_layout(cols), name=f"out_slot_{i}") for i in range(2)]
            push = Signal()
            pop = Signal()
            advance_next = Signal()
            m.d.comb += [
                self.c.valid.eq(buffered != 0),
                self.c.payload.eq(slots[0]),
                pop.eq(self.c.valid & self.c.ready),
                push.eq(advance & out_valid),
            ]
            with m.If(pop):
                m.d.sync += slots[0].eq(slots[1])
            with m.If(push):
                with m.If((buffered - pop) == 0):
                    m.d.sync += slots[0].eq(out_row)
                with m.Else():
                    m.d.sync += slots[1].eq(out_row)
            m.d.sync += buffered.eq(buffered + push - pop)
            # Advance in the next cycle only if a row coming out then still fits.
            m.d.comb += advance_next.eq(buffered + push - pop <= 1)
            advance_reg = Signal(init=1)
            m.d.sync += advance_reg.eq(advance_next)
            m.d.comb += advance.eq(advance_reg)
        else:
            m.d.comb += [
                self.c.payload.eq(out_row),
                self.c.valid.eq(out_valid),
                advance.eq(~self.c.valid | self.c.ready),
            ]

        # -- Bank bookkeeping: a bank is free once its pass is fed and its rows drained -------
        inflight = [Signal(range(self._max_rows + rows + cols + 8), name=f"inflight_{b}")
                    for b in range(2)]
        for b in range(2):
            # A row injected is counted a cycle later (``up``, a register, still counts in
            # the test below): no path from ``inject`` through the adder (the ULX3S core's
            # path at 83 MHz with some placements). A row leaves the array many cycles
            # after it was injected, so the count never goes below zero.
            up = Signal(name=f"inflight_up_{b}")
            m.d.sync += up.eq(inject & (feed_bank == b))
            down = advance & d_tag.valid & (d_tag.bank == b)
            m.d.sync += inflight[b].eq(inflight[b] + up - down)
            with m.If(feed_done[b] & (inflight[b] == 0) & ~up & ~set_loaded[b]):
                m.d.comb += clear_loaded[b].eq(1)
        m.d.sync += [
            loaded.eq((loaded | set_loaded) & ~clear_loaded),
            pass_ready.eq(pass_ready_next),
            feed_done.eq((feed_done | set_done) & ~set_loaded & ~clear_loaded),
        ]

        # -- Counters -------------------------------------------------------------------------
        in_pipeline = Signal(range(self._max_rows + rows + cols + 16))
        m.d.sync += in_pipeline.eq(in_pipeline + inject - (advance & out_tag.valid))
        busy = (loaded != 0) | loading | (in_pipeline != 0) | (buffered != 0)
        with m.If(busy):
            m.d.sync += self.cycle_count.eq(self.cycle_count + 1)
        with m.If(inject):
            m.d.sync += self.row_count.eq(self.row_count + 1)
        with m.If(~advance):
            m.d.sync += self.stall_count.eq(self.stall_count + 1)
        return m
