"""The compute unit: GEMM (the matmul engine and its post-processing), TABLE and NOP."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..isa import PARAM_WORDS, Bank, Instruction, Opcode, PostOp
from ..matmul.array import pe_module_name
from ..matmul.engine import MatmulEngine
from ..matmul.pe import ProcessingElement
from ..matmul.mode import MatmulMode
from .buffer_reader import BufferReader
from .instruction_control import InstructionControl
from .post_processor import PostProcessor, param_set_layout
from .range_check import Extent, RangeCheck
from .status import ErrorCode
from .weight_transposer import WeightTransposer
from .write_port import buffer_write_layout


__all__ = ["ComputeUnit", "shared_pe_modules"]

_TAG_WEIGHT, _TAG_PARAM, _TAG_TABLE = 0, 1, 2


def shared_pe_modules(lanes, fp8, shared):
    """The PE Verilog module the engine instantiates when ``shared`` (see MatmulEngine)."""
    if not shared:
        return {}
    return {pe_module_name(lanes, fp8): ProcessingElement(rows=lanes, fp8=fp8)}


class ComputeUnit(wiring.Component):
    """Runs the compute instructions, one at a time.

    **GEMM** (see :data:`rtl.isa.GemmInstruction`): for every output tile j (``lanes``
    columns) and every K tile kt, one engine pass: a command, the ``lanes`` weight
    rows of W[kt, j] read from WGT (transposed on the way with ``transpose_w``), and
    the ``m`` A rows of A[:, kt] read from INP; the passes of tile j accumulate in
    the engine and the last one emits. Two sequencers, one per buffer, run ahead of
    the engine, which double-buffers the weights, so consecutive passes stream
    without a bubble. The post-processor writes the rows to ``out_bank``.

    **TABLE**: the 256-entry activation table from WGT. **NOP**: nothing.

    Checks before anything runs: BAD_FIELD for m = 0 or > ``max_rows``, k_tiles = 0,
    n_tiles = 0, a mode the engine was not built with, post op 3, out bank
    COUNTERS; ADDRESS for any operand outside its buffer. A failed instruction is
    skipped (its tokens are still pushed).
    """

    def __init__(self, *, lanes, depths, max_rows, fp8, shared_pe_module):
        self._lanes = lanes
        self._depths = depths
        self._max_rows = max_rows
        self._fp8 = fp8
        self._shared_pe_module = shared_pe_module
        word_bits = 8 * lanes
        super().__init__({
            "insn": In(stream.Signature(Instruction)),
            "prev_available": In(1),
            "prev_take": Out(1),
            "push_prev": Out(1),
            "next_available": In(1),
            "next_take": Out(1),
            "push_next": Out(1),
            "inp_addr": Out(16),
            "inp_en": Out(1),
            "inp_data": In(word_bits),
            "wgt_addr": Out(16),
            "wgt_en": Out(1),
            "wgt_data": In(word_bits),
            "write": Out(stream.Signature(buffer_write_layout(word_bits))),
            "error": Out(1),
            "error_code": Out(4),
            "busy": Out(1),
            "waiting_prev": Out(1),
            "waiting_next": Out(1),
            "empty": Out(1),
            "mac": Out(1),
            "post_stall": Out(1),
            "saturations": Out(range(lanes + 1)),
        })

    def verilog_modules(self):
        return shared_pe_modules(self._lanes, self._fp8, self._shared_pe_module)

    def _engine(self):
        return MatmulEngine(rows=self._lanes, cols=self._lanes, max_rows=self._max_rows,
                            fp8=self._fp8, shared_pe_module=self._shared_pe_module)

    def elaborate(self, platform):
        m = Module()
        n = self._lanes
        log_n = exact_log2(n)
        word_bits = 8 * n

        m.submodules.control = control = InstructionControl()
        wiring.connect(m, wiring.flipped(self.insn), control.insn)
        header = control.current.header
        m.d.comb += [
            control.prev_available.eq(self.prev_available),
            control.next_available.eq(self.next_available),
            self.prev_take.eq(control.prev_take),
            self.next_take.eq(control.next_take),
            self.push_prev.eq(control.push_prev),
            self.push_next.eq(control.push_next),
            self.busy.eq(control.busy),
            self.empty.eq(control.empty),
            self.waiting_prev.eq(control.waiting & header.pop_prev & ~self.prev_available),
            self.waiting_next.eq(control.waiting & header.pop_next & ~self.next_available),
        ]
        g = control.current.gemm
        tbl = control.current.table
        opcode = header.opcode
        is_gemm = opcode == Opcode.GEMM
        is_table = opcode == Opcode.TABLE
        raw = g.post == PostOp.RAW
        table_words = 256 // n

        # -- Checks --------------------------------------------------------------------------
        max_mode = MatmulMode.E5M2_E4M3.value if self._fp8 else MatmulMode.UINT8.value
        field_bad = is_gemm & ((g.m == 0) | (g.m > self._max_rows) | (g.k_tiles == 0)
                               | (g.n_tiles == 0) | (g.mode.as_value() > max_mode)
                               | (g.post.as_value() == 3) | (g.out_bank == Bank.COUNTERS))
        out_limit = Signal(17)
        with m.Switch(g.out_bank):
            for bank in (Bank.INP, Bank.WGT, Bank.OUT):
                with m.Case(bank):
                    m.d.comb += out_limit.eq(self._depths[bank])
        inp_depth, wgt_depth = self._depths[Bank.INP], self._depths[Bank.WGT]
        m.submodules.check = check = RangeCheck(4)
        check.connect_extents([
            Extent(Mux(is_table, tbl.base, g.a_base), Mux(is_table, 1, g.m), g.a_stride,
                   Mux(is_table, table_words, g.k_tiles), Mux(is_table, wgt_depth, inp_depth)),
            Extent(g.w_base, Mux(g.transpose_w, g.n_tiles, g.k_tiles) << log_n, g.w_stride,
                   Mux(g.transpose_w, g.k_tiles, g.n_tiles), wgt_depth, enable=is_gemm),
            Extent(g.param_base, 1, 0, g.n_tiles * PARAM_WORDS, wgt_depth, enable=is_gemm & ~raw),
            Extent(g.out_base, g.m, g.out_stride, Mux(raw, g.n_tiles << 2, g.n_tiles), out_limit,
                   enable=is_gemm),
        ])
        m.d.comb += check.start.eq(control.start)

        # -- Datapath ------------------------------------------------------------------------
        m.submodules.engine = engine = self._engine()
        m.submodules.inp_reader = inp_reader = BufferReader(addr_width=16, data_width=word_bits)
        m.submodules.wgt_reader = wgt_reader = BufferReader(addr_width=16, data_width=word_bits,
                                                            tag_width=2)
        m.submodules.transposer = transposer = WeightTransposer(n)
        m.submodules.post = post = PostProcessor(lanes=n, max_rows=self._max_rows)
        params_layout = param_set_layout(n)
        m.submodules.param_fifo = param_fifo = SyncFIFO(width=params_layout.size, depth=4)
        m.d.comb += [
            self.inp_addr.eq(inp_reader.port_addr), self.inp_en.eq(inp_reader.port_en),
            inp_reader.port_data.eq(self.inp_data),
            self.wgt_addr.eq(wgt_reader.port_addr), self.wgt_en.eq(wgt_reader.port_en),
            wgt_reader.port_data.eq(self.wgt_data),
        ]
        wiring.connect(m, post.write, wiring.flipped(self.write))
        m.d.comb += [
            post.post.eq(g.post), post.out_bank.eq(g.out_bank), post.out_base.eq(g.out_base),
            post.out_stride.eq(g.out_stride), post.m.eq(g.m), post.n_tiles.eq(g.n_tiles),
            post.rows.payload.eq(engine.c.payload), post.rows.valid.eq(engine.c.valid),
            engine.c.ready.eq(post.rows.ready),
            post.params.payload.eq(param_fifo.r_data), post.params.valid.eq(param_fifo.r_rdy),
            param_fifo.r_en.eq(post.params.ready),
        ]
        # A rows: INP reader -> engine.a
        m.d.comb += [
            engine.a.payload.eq(inp_reader.data.payload.data),
            engine.a.valid.eq(inp_reader.data.valid),
            inp_reader.data.ready.eq(engine.a.ready),
            self.mac.eq(engine.a.valid & engine.a.ready),
            self.post_stall.eq(engine.c.valid & ~engine.c.ready),
            self.saturations.eq(post.saturations),
        ]
        # WGT reader -> weights (direct or transposed), parameter collector, table serializer
        wdata = wgt_reader.data
        tag = wdata.payload.tag
        collected = Signal(range(PARAM_WORDS))
        param_words = Signal(PARAM_WORDS * word_bits)
        table_word = Signal(data.ArrayLayout(8, n))
        table_lane = Signal(range(n))
        table_index = Signal(9)
        table_held = Signal()
        m.d.comb += [
            transposer.i.payload.eq(wdata.payload.data),
            post.table.payload.index.eq(table_index),
            post.table.payload.value.eq(table_word[0]),
        ]
        with m.Switch(table_lane):
            for lane in range(n):
                with m.Case(lane):
                    m.d.comb += post.table.payload.value.eq(table_word[lane])
        with m.If(g.transpose_w):
            wiring.connect(m, transposer.o, engine.weights)
        with m.Else():
            m.d.comb += engine.weights.payload.eq(wdata.payload.data)
        with m.Switch(tag):
            with m.Case(_TAG_WEIGHT):
                with m.If(g.transpose_w):
                    m.d.comb += [transposer.i.valid.eq(wdata.valid),
                                 wdata.ready.eq(transposer.i.ready)]
                with m.Else():
                    m.d.comb += [engine.weights.valid.eq(wdata.valid),
                                 wdata.ready.eq(engine.weights.ready)]
            with m.Case(_TAG_PARAM):
                last = collected == PARAM_WORDS - 1
                m.d.comb += [
                    wdata.ready.eq(~last | param_fifo.w_rdy),
                    param_fifo.w_data.eq(Cat(param_words[word_bits:], wdata.payload.data)),
                    param_fifo.w_en.eq(wdata.valid & last),
                ]
                with m.If(wdata.valid & wdata.ready):
                    m.d.sync += [param_words.eq(Cat(param_words[word_bits:], wdata.payload.data)),
                                 collected.eq(Mux(last, 0, collected + 1))]
            with m.Case(_TAG_TABLE):
                m.d.comb += wdata.ready.eq(~table_held)
                with m.If(wdata.valid & ~table_held):
                    m.d.sync += [table_word.eq(wdata.payload.data), table_held.eq(1),
                                 table_lane.eq(0)]
        m.d.comb += post.table.valid.eq(table_held)
        with m.If(table_held & post.table.ready):
            m.d.sync += [table_index.eq(table_index + 1), table_lane.eq(table_lane + 1)]
            with m.If(table_lane == n - 1):
                m.d.sync += table_held.eq(0)

        # -- Sequencers ----------------------------------------------------------------------
        seq_start = Signal()
        # Weight sequencer: parameters, pass commands, weight rows (or the table words).
        w_j = Signal(16)
        w_kt = Signal(16)
        w_i = Signal(16)
        w_ptr = Signal(16)
        w_tile_base = Signal(16)
        p_ptr = Signal(16)
        m.d.comb += [
            engine.cmd.payload.mode.eq(g.mode),
            engine.cmd.payload.rows.eq(g.m),
            engine.cmd.payload.accumulate.eq(w_kt != 0),
            engine.cmd.payload.emit.eq(w_kt == g.k_tiles - 1),
        ]
        with m.FSM(name="weight_sequencer"):
            with m.State("IDLE"):
                with m.If(seq_start & is_gemm):
                    m.d.sync += [w_j.eq(0), w_kt.eq(0), w_i.eq(0), p_ptr.eq(g.param_base),
                                 w_tile_base.eq(g.w_base)]
                    m.next = "CMD"
                    with m.If(~raw):
                        m.next = "PARAMS"
                with m.If(seq_start & is_table):
                    m.d.sync += [w_i.eq(0), w_ptr.eq(tbl.base), table_index.eq(0)]
                    m.next = "TABLE"
            with m.State("PARAMS"):
                m.d.comb += [wgt_reader.addr.valid.eq(1), wgt_reader.addr.payload.addr.eq(p_ptr),
                             wgt_reader.addr.payload.tag.eq(_TAG_PARAM)]
                with m.If(wgt_reader.addr.ready):
                    m.d.sync += [p_ptr.eq(p_ptr + 1), w_i.eq(w_i + 1)]
                    with m.If(w_i == PARAM_WORDS - 1):
                        m.d.sync += w_i.eq(0)
                        m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += engine.cmd.valid.eq(1)
                with m.If(engine.cmd.ready):
                    with m.If(g.transpose_w):
                        m.d.sync += w_ptr.eq(w_tile_base + w_kt)
                    with m.Elif(w_kt == 0):
                        m.d.sync += w_ptr.eq(w_tile_base)
                    m.next = "WEIGHTS"
            with m.State("WEIGHTS"):
                m.d.comb += [wgt_reader.addr.valid.eq(1), wgt_reader.addr.payload.addr.eq(w_ptr),
                             wgt_reader.addr.payload.tag.eq(_TAG_WEIGHT)]
                with m.If(wgt_reader.addr.ready):
                    m.d.sync += [w_ptr.eq(w_ptr + g.w_stride), w_i.eq(w_i + 1)]
                    with m.If(w_i == n - 1):
                        m.d.sync += w_i.eq(0)
                        with m.If(w_kt == g.k_tiles - 1):
                            m.d.sync += [w_kt.eq(0), w_j.eq(w_j + 1),
                                         w_tile_base.eq(w_tile_base
                                                        + Mux(g.transpose_w, g.w_stride << log_n, 1))]
                            with m.If(w_j == g.n_tiles - 1):
                                m.next = "IDLE"
                            with m.Elif(~raw):
                                m.next = "PARAMS"
                            with m.Else():
                                m.next = "CMD"
                        with m.Else():
                            m.d.sync += w_kt.eq(w_kt + 1)
                            m.next = "CMD"
            with m.State("TABLE"):
                m.d.comb += [wgt_reader.addr.valid.eq(1), wgt_reader.addr.payload.addr.eq(w_ptr),
                             wgt_reader.addr.payload.tag.eq(_TAG_TABLE)]
                with m.If(wgt_reader.addr.ready):
                    m.d.sync += [w_ptr.eq(w_ptr + 1), w_i.eq(w_i + 1)]
                    with m.If(w_i == table_words - 1):
                        m.next = "IDLE"

        # A sequencer: for every pass, m rows of A[:, kt] from INP.
        a_j = Signal(16)
        a_kt = Signal(16)
        a_row = Signal(16)
        a_ptr = Signal(16)
        m.d.comb += [inp_reader.addr.payload.addr.eq(a_ptr), inp_reader.addr.payload.tag.eq(0)]
        with m.FSM(name="a_sequencer"):
            with m.State("IDLE"):
                with m.If(seq_start & is_gemm):
                    m.d.sync += [a_j.eq(0), a_kt.eq(0), a_row.eq(0), a_ptr.eq(g.a_base)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += inp_reader.addr.valid.eq(1)
                with m.If(inp_reader.addr.ready):
                    m.d.sync += [a_ptr.eq(a_ptr + g.a_stride), a_row.eq(a_row + 1)]
                    with m.If(a_row == g.m - 1):
                        m.d.sync += a_row.eq(0)
                        with m.If(a_kt == g.k_tiles - 1):
                            m.d.sync += [a_kt.eq(0), a_j.eq(a_j + 1), a_ptr.eq(g.a_base)]
                            with m.If(a_j == g.n_tiles - 1):
                                m.next = "IDLE"
                        with m.Else():
                            m.d.sync += [a_kt.eq(a_kt + 1), a_ptr.eq(g.a_base + a_kt + 1)]

        # -- Instruction FSM -----------------------------------------------------------------
        table_done = Signal()
        m.d.comb += table_done.eq(table_held & post.table.ready & (table_index == 255))
        m.d.comb += [
            self.error.eq(0),
        ]
        with m.FSM(name="compute"):
            with m.State("IDLE"):
                with m.If(control.start):
                    with m.If(is_gemm | is_table):
                        m.next = "CHECK"
                    with m.Else():
                        m.next = "DONE"
            with m.State("CHECK"):
                with m.If(check.done):
                    with m.If(field_bad):
                        m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.BAD_FIELD)]
                        m.next = "DONE"
                    with m.Elif(check.bad):
                        m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.ADDRESS)]
                        m.next = "DONE"
                    with m.Else():
                        m.d.comb += seq_start.eq(1)
                        m.d.comb += post.start.eq(is_gemm)
                        with m.If(is_gemm):
                            m.next = "GEMM"
                        with m.Else():
                            m.next = "TABLE"
            with m.State("GEMM"):
                with m.If(post.engine_error):
                    m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.ENGINE)]
                with m.Elif(post.shift_error):
                    m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.BAD_FIELD)]
                with m.If(post.done):
                    m.next = "DONE"
            with m.State("TABLE"):
                with m.If(table_done):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += control.done.eq(1)
                m.next = "IDLE"
        return m
