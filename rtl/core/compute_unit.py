"""The compute unit: GEMM, the row-wise ops (SOFTMAX, LAYERNORM, ACTIVATION, REQUANT), TABLE, NOP."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ..activation import Activation
from ..isa import (PARAM_WORDS, PARAM_WORDS_WIDE, Bank, ConvertTarget, Instruction, Opcode, PostOp,
                   TableTarget)
from ..layernorm import LayerNorm
from ..matmul import array
from ..matmul.engine import MatmulEngine
from ..matmul.mode import MatmulMode
from ..softmax import Softmax
from .absent_unit import AbsentUnit
from .buffer_reader import BufferReader
from .instruction_control import InstructionControl, settled
from .post_processor import PostProcessor, decode_param_words, param_set_layout
from .range_check import Extent, RangeCheck
from .status import ErrorCode
from .table_loader import TableLoader
from .weight_transposer import WeightTransposer
from .write_port import buffer_write_layout


__all__ = ["ComputeUnit", "shared_pe_modules"]

_TAG_WEIGHT, _TAG_PARAM, _TAG_TABLE, _TAG_RESIDUAL = 0, 1, 2, 3


def constant_product(value, constant):
    """``value * constant`` as a sum of shifted copies of ``value`` (no multiplier)."""
    terms = [value << i for i in range(constant.bit_length()) if constant >> i & 1]
    return sum(terms[1:], terms[0])


def shared_pe_modules(lanes, fp8, shared, pe_multiplier=None):
    """The PE Verilog module the engine instantiates when ``shared`` (see MatmulEngine)."""
    return array.shared_pe_modules(lanes, fp8, pe_multiplier=pe_multiplier) if shared else {}


class ComputeUnit(wiring.Component):
    """Runs the compute instructions, one at a time.

    **GEMM** (see :data:`rtl.isa.GemmInstruction`): for every output tile j (``lanes``
    columns) and every K tile kt, one engine pass: a command, the ``lanes`` weight
    rows of W[kt, j] read from WGT (transposed on the way with ``transpose_w``), and
    the ``m`` A rows of A[:, kt] read from INP; the passes of tile j accumulate in
    the engine and the last one emits. Two sequencers, one per buffer, run ahead of
    the engine, which double-buffers the weights, so consecutive passes stream
    without a bubble. The post-processor writes the rows to ``out_bank``. With row
    classes (``cls_rows`` != 0) the weight sequencer reads two parameter sets per tile
    into the parameter FIFO, the class-1 set (``cls_param_base``) first; the
    post-processor takes the first for rows < ``cls_rows``, the second for the rest. With
    ``wide`` the requantized results are INT16 (two words per tile); with ``residual`` the
    weight sequencer reads tile j's ``m`` INT8 residual words right after its weights (they
    wait in the residual FIFO until tile j's rows come out; ``residual * d`` is added before
    the bias). Both take the 13-word parameter sets.

    **SOFTMAX, LAYERNORM, ACTIVATION** (:data:`rtl.isa.VectorInstruction`): rows of
    words from INP through the softmax, LayerNorm or activation unit (``lanes``
    elements per cycle) to ``dst_bank``; LAYERNORM with ``wide`` reads INT16 rows, two INP
    words per transfer of ``lanes`` elements (the LayerNorm unit has 16-bit lanes; INT8
    rows go in sign-extended). **REQUANT**: INT32 rows from INP (4 words per
    output word) through the post-processor's requantizers (and the activation
    table); with ``wide`` INT16 outputs (2 words per 4 input words), with ``residual``
    one INT8 residual word per row and tile from WGT (the weight sequencer reads tile j's
    parameters, then its ``rows`` residual words, then tile j + 1's parameters, so the
    two share the WGT read port without colliding). **TABLE**: the activation, softmax or LayerNorm table from WGT.
    **NOP**: nothing.

    Checks before anything runs: BAD_FIELD for a size of 0 or beyond the unit's
    limit (``max_rows``, ``max_length``, ``max_hidden``), a mode the engine was not
    built with, CONVERT with an integer mode, ``wide``, ``residual`` or target 3 (or on a
    core without the FP8 modes), a COUNTERS destination, GEMM ``cls_rows`` >= ``m`` or with RAW,
    GEMM ``wide`` or ``residual`` with RAW, GEMM ``wide`` with REQUANT_ACT,
    a softmax ``length`` beyond the row, a bad table target or count, ``residual`` on
    any vector op but REQUANT, ``wide`` on any but REQUANT and LAYERNORM, REQUANT ``wide``
    with ``activate`` or an odd ``words``; ADDRESS for any operand (the residual rows and
    GEMM's class-1 parameters too) outside its buffer. A failed instruction is skipped (its
    tokens are still pushed).
    """

    def __init__(self, *, lanes, depths, max_rows, fp8, shared_pe_module, max_length=512,
                 max_hidden=1024, vector_units=True, requantizer=True, pe_multiplier=None,
                 accumulator_stage=False, range_check_stage=False,
                 range_check_multiplier="behavioral", broadcast_stage=False, read_stage=False):
        if lanes < 4:
            raise ValueError("the compute unit needs at least 4 lanes (32-bit table entries)")
        self._lanes = lanes
        self._depths = depths
        self._max_rows = max_rows
        self._fp8 = fp8
        self._shared_pe_module = shared_pe_module
        self._pe_multiplier = pe_multiplier
        self._accumulator_stage = bool(accumulator_stage)
        self._range_check_stage = bool(range_check_stage)
        self._range_check_multiplier = range_check_multiplier
        self._broadcast_stage = bool(broadcast_stage)
        self._read_stage = bool(read_stage)
        self._max_length = max_length
        self._max_hidden = max_hidden
        self._vector_units = bool(vector_units)
        self._requantizer = bool(requantizer)
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
            "inp_data": In(word_bits),
            "wgt_addr": Out(16),
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
        return shared_pe_modules(self._lanes, self._fp8, self._shared_pe_module,
                                 self._pe_multiplier)

    def elaborate(self, platform):
        m = Module()
        n = self._lanes
        log_n = exact_log2(n)
        word_bits = 8 * n
        per_word = n // 4

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
        v = control.current.vector
        opcode = header.opcode
        is_gemm = opcode == Opcode.GEMM
        is_table = opcode == Opcode.TABLE
        is_softmax = opcode == Opcode.SOFTMAX
        is_layernorm = opcode == Opcode.LAYERNORM
        is_activation = opcode == Opcode.ACTIVATION
        is_requant = opcode == Opcode.REQUANT
        is_rowwise = is_softmax | is_layernorm | is_activation
        is_vector = is_rowwise | is_requant
        is_post = is_gemm | is_requant
        raw = g.post == PostOp.RAW
        gemm_cls = is_gemm & ~raw & (g.cls_rows != 0)     # row classes: two sets per tile
        gemm_res = is_gemm & ~raw & g.residual            # residual rows after each tile's weights
        convert = g.post == PostOp.CONVERT
        gemm_two_words = g.wide | (convert & (g.target == ConvertTarget.INT16))  # INT16 results
        # REQUANT: ``wide`` gives 2 output words per tile of lanes columns, ``wide`` or
        # ``residual`` the 13-word parameter sets; each tile has 4 INT32 input words per row.
        # GEMM's REQUANT post op takes the same options (``g.wide``, ``g.residual``).
        rq_tiles = Mux(v.wide, v.words >> 1, v.words)
        wide_params = Mux(is_gemm, g.wide | g.residual, is_requant & (v.wide | v.residual))
        # LAYERNORM with ``wide``: INT16 rows, 2 input words per output word.
        ln_wide = is_layernorm & v.wide
        row_in_words = Mux(ln_wide, v.words << 1, v.words)
        in_words = Mux(is_requant, rq_tiles << 2, row_in_words)
        row_elements = v.words << log_n
        table_words = (tbl.count + per_word - 1) >> exact_log2(per_word)

        # The WGT words of all the parameter sets (GEMM's tiles, or REQUANT's), one set per
        # tile: by shifts and adds (Yosys would give a constant product a DSP, and that DSP
        # on the way from the instruction to the range check was the ULX3S core's critical
        # path, 15.3 ns), settled: extents after the first are read by the range check two
        # or more cycles after ``start``.
        param_tiles = Mux(is_gemm, g.n_tiles, rq_tiles)
        param_words = settled(m, Mux(wide_params,
                                     constant_product(param_tiles, PARAM_WORDS_WIDE),
                                     constant_product(param_tiles, PARAM_WORDS)), "param_words")

        # Loop bounds (last indices) of the sequencers, as ``settled`` registers.
        m_last, k_last = settled(m, g.m - 1, "m_last"), settled(m, g.k_tiles - 1, "k_last")
        n_last = settled(m, g.n_tiles - 1, "n_last")
        rows_last = settled(m, v.rows - 1, "rows_last")
        words_last = settled(m, v.words - 1, "words_last")
        rq_tiles_last = settled(m, rq_tiles - 1, "rq_tiles_last")
        row_in_words_last = settled(m, row_in_words - 1, "row_in_words_last")
        table_words_last = settled(m, table_words - 1, "table_words_last")

        # -- Checks --------------------------------------------------------------------------
        max_mode = MatmulMode.E5M2_E4M3.value if self._fp8 else MatmulMode.UINT8.value
        # CONVERT: FP32 results only (an FP8 mode), none of REQUANT's options, targets 0-2.
        convert_bad = convert & ((g.mode.as_value() < MatmulMode.E4M3.value) | g.wide | g.residual
                                 | (g.target.as_value() == 3))
        if not (self._fp8 and self._requantizer):     # no converters
            convert_bad = convert
        gemm_bad = ((g.m == 0) | (g.m > self._max_rows) | (g.k_tiles == 0) | (g.n_tiles == 0)
                    | (g.mode.as_value() > max_mode) | convert_bad
                    | (g.out_bank == Bank.COUNTERS)
                    | ((g.cls_rows != 0) & ((g.cls_rows >= g.m) | raw))
                    | ((g.wide | g.residual) & raw) | (g.wide & (g.post == PostOp.REQUANT_ACT)))
        vector_bad = ((v.rows == 0) | (v.words == 0) | (v.dst_bank == Bank.COUNTERS)
                      | (is_softmax & ((row_elements > self._max_length) | (v.length > row_elements)))
                      | (is_layernorm & (row_elements > self._max_hidden))
                      | (v.residual & ~is_requant) | (v.wide & ~is_requant & ~is_layernorm)
                      | (is_requant & v.wide & (v.activate | v.words[0])))
        table_bad = ((tbl.count == 0) | (tbl.target.as_value() == 3)
                     | ((tbl.target != TableTarget.LAYERNORM) & (tbl.count > 256))
                     | ((tbl.target == TableTarget.LAYERNORM)
                        & ((tbl.count > 2 * self._max_hidden) | tbl.count[0])))
        if not self._vector_units:    # SOFTMAX, LAYERNORM, ACTIVATION, TABLE, REQUANT_ACT
            gemm_bad = gemm_bad | (g.post == PostOp.REQUANT_ACT)
            vector_bad = vector_bad | is_rowwise | (is_requant & v.activate)
            table_bad = 1
        if not self._requantizer:     # only RAW results
            gemm_bad = gemm_bad | (g.post != PostOp.RAW)
            vector_bad = vector_bad | is_requant
        field_bad = settled(m, Mux(is_gemm, gemm_bad, Mux(is_vector, vector_bad,
                                                       Mux(is_table, table_bad, 0))), "field_bad")

        def depth_of(bank):
            limit = Signal(17)
            with m.Switch(bank):
                for b in (Bank.INP, Bank.WGT, Bank.OUT):
                    with m.Case(b):
                        m.d.comb += limit.eq(self._depths[b])
            return limit
        out_bank = Mux(is_gemm, g.out_bank, v.dst_bank)
        out_limit = depth_of(out_bank)
        inp_depth, wgt_depth = self._depths[Bank.INP], self._depths[Bank.WGT]
        m.submodules.check = check = RangeCheck(6, product_stage=self._range_check_stage,
                                                multiplier=self._range_check_multiplier)
        check.connect_extents([
            Extent(Mux(is_table, tbl.base, Mux(is_gemm, g.a_base, v.src_base)),
                   Mux(is_table, 1, Mux(is_gemm, g.m, v.rows)),
                   Mux(is_gemm, g.a_stride, v.src_stride),
                   Mux(is_table, table_words, Mux(is_gemm, g.k_tiles, in_words)),
                   Mux(is_table, wgt_depth, inp_depth)),
            Extent(g.w_base, Mux(g.transpose_w, g.n_tiles, g.k_tiles) << log_n, g.w_stride,
                   Mux(g.transpose_w, g.k_tiles, g.n_tiles), wgt_depth, enable=is_gemm),
            Extent(Mux(is_gemm, g.param_base, v.param_base), 1, 0, param_words,
                   wgt_depth, enable=(is_gemm & ~raw) | is_requant),
            # The residual rows (REQUANT or GEMM).
            Extent(Mux(is_gemm, g.res_base, v.res_base), Mux(is_gemm, g.m, v.rows),
                   Mux(is_gemm, g.res_stride, v.res_stride), Mux(is_gemm, g.n_tiles, rq_tiles),
                   wgt_depth, enable=gemm_res | (is_requant & v.residual)),
            # GEMM's class-1 parameters.
            Extent(g.cls_param_base, 1, 0, param_words, wgt_depth, enable=gemm_cls),
            Extent(Mux(is_gemm, g.out_base, v.dst_base), Mux(is_gemm, g.m, v.rows),
                   Mux(is_gemm, g.out_stride, v.dst_stride),
                   Mux(is_gemm, Mux(raw, g.n_tiles << 2, Mux(gemm_two_words, g.n_tiles << 1, g.n_tiles)),
                       v.words), out_limit,
                   enable=is_gemm | is_vector),
        ])
        m.d.comb += check.start.eq(control.start)

        # -- Units ---------------------------------------------------------------------------
        m.submodules.engine = engine = MatmulEngine(
            rows=n, cols=n, max_rows=self._max_rows, fp8=self._fp8,
            shared_pe_module=self._shared_pe_module, pe_multiplier=self._pe_multiplier,
            accumulator_stage=self._accumulator_stage, broadcast_stage=self._broadcast_stage)
        m.submodules.inp_reader = inp_reader = BufferReader(
            addr_width=16, data_width=word_bits, address_stage=self._read_stage,
            data_stage=self._read_stage)
        m.submodules.wgt_reader = wgt_reader = BufferReader(
            addr_width=16, data_width=word_bits, tag_width=2,
            address_stage=self._read_stage, data_stage=self._read_stage)
        m.submodules.transposer = transposer = WeightTransposer(n)
        m.submodules.post = post = PostProcessor(lanes=n, max_rows=self._max_rows,
                                                 requantize=self._requantizer, convert=self._fp8)
        vector_units = {
            "activation": Activation(lanes=n),
            "softmax": Softmax(max_length=self._max_length, lanes=n),
            "layernorm": LayerNorm(max_hidden=self._max_hidden, lanes=n, input_bits=16),
            "tables": TableLoader(lanes=n, max_hidden=self._max_hidden),
        }
        if not self._vector_units:
            vector_units = {name: AbsentUnit(unit) for name, unit in vector_units.items()}
        for name, unit in vector_units.items():
            m.submodules[name] = unit
        act, softmax, layernorm, tables = (vector_units[name] for name in
                                           ("activation", "softmax", "layernorm", "tables"))
        params_layout = param_set_layout(n)
        m.submodules.param_fifo = param_fifo = SyncFIFO(width=params_layout.size, depth=4)
        m.submodules.residual_fifo = residual_fifo = SyncFIFO(width=word_bits, depth=4)
        m.d.comb += [
            self.inp_addr.eq(inp_reader.port_addr),
            inp_reader.port_data.eq(self.inp_data),
            self.wgt_addr.eq(wgt_reader.port_addr),
            wgt_reader.port_data.eq(self.wgt_data),
            self.mac.eq(engine.a.valid & engine.a.ready),
            self.post_stall.eq(engine.c.valid & ~engine.c.ready),
            self.saturations.eq(post.saturations),
        ]
        wiring.connect(m, tables.activation, act.table)
        wiring.connect(m, tables.softmax, softmax.table)
        wiring.connect(m, tables.layernorm, layernorm.params)
        m.d.comb += [tables.target.eq(tbl.target), tables.count.eq(tbl.count)]

        # Post-processor: configuration, rows from the engine (GEMM) or INP (REQUANT). The
        # configuration is settled (the post-processor starts when the range check is
        # done): its operation decoded from the instruction ran on into the row handshake
        # and the engine's output buffer (the ULX3S core's path at 90 MHz, 11.1 ns).
        configuration = {
            "post": Mux(is_gemm, g.post, Mux(v.activate, PostOp.REQUANT_ACT, PostOp.REQUANT)),
            "out_bank": out_bank,
            "out_base": Mux(is_gemm, g.out_base, v.dst_base),
            "out_stride": Mux(is_gemm, g.out_stride, v.dst_stride),
            "m": Mux(is_gemm, g.m, v.rows),
            "n_tiles": Mux(is_gemm, g.n_tiles, rq_tiles),
            "wide": Mux(is_gemm, g.wide, is_requant & v.wide),
            "residual_en": Mux(is_gemm, g.residual, is_requant & v.residual),
            "cls_rows": Mux(gemm_cls, g.cls_rows, 0),
            "target": g.target,
        }
        for name, value in configuration.items():
            m.d.comb += getattr(post, name).eq(settled(m, value, f"post_{name}"))
        m.d.comb += [
            post.params.payload.eq(param_fifo.r_data), post.params.valid.eq(param_fifo.r_rdy),
            param_fifo.r_en.eq(post.params.ready),
            post.residual.payload.eq(residual_fifo.r_data),
            post.residual.valid.eq(residual_fifo.r_rdy),
            residual_fifo.r_en.eq(post.residual.ready),
        ]
        # The datapath's operation, settled (it moves only after the range check is done):
        # decoded straight from the instruction it ran on into the row handshakes and the
        # error code (the ULX3S core's path at 90 MHz with some placements, 10.6 ns).
        run_requant, run_gemm, run_softmax = (settled(m, is_requant, "run_requant"),
                                              settled(m, is_gemm, "run_gemm"),
                                              settled(m, is_softmax, "run_softmax"))
        run_layernorm, run_activation, run_ln_wide = (
            settled(m, is_layernorm, "run_layernorm"), settled(m, is_activation, "run_activation"),
            settled(m, ln_wide, "run_ln_wide"))
        quad = Signal(data.ArrayLayout(word_bits, 3))
        quad_count = Signal(2)
        idata = inp_reader.data
        with m.If(run_requant):
            m.d.comb += [
                post.rows.payload.values.eq(Cat(quad, idata.payload.data)),
                post.rows.valid.eq(idata.valid & (quad_count == 3)),
                idata.ready.eq((quad_count != 3) | post.rows.ready),
            ]
            with m.If(idata.valid & idata.ready):
                m.d.sync += quad_count.eq(quad_count + 1)
                for q in range(3):
                    with m.If(quad_count == q):
                        m.d.sync += quad[q].eq(idata.payload.data)
        with m.Else():
            m.d.comb += [post.rows.payload.eq(engine.c.payload), post.rows.valid.eq(engine.c.valid),
                         engine.c.ready.eq(post.rows.ready)]

        # INP words to the engine or a row-wise unit.
        m.d.comb += [
            engine.a.payload.eq(idata.payload.data),
            softmax.i.payload.eq(idata.payload.data),
        ]
        with m.If(run_gemm):
            m.d.comb += [engine.a.valid.eq(idata.valid), idata.ready.eq(engine.a.ready)]
        with m.If(run_softmax):
            m.d.comb += [softmax.i.valid.eq(idata.valid), idata.ready.eq(softmax.i.ready)]
        # LayerNorm (16-bit lanes): INT8 rows sign-extended, one word per transfer; INT16
        # rows (``wide``) from two words, the first held in ``ln_half`` (lanes 0..n/2-1).
        ln_half = Signal(word_bits)
        ln_half_full = Signal()
        with m.If(run_ln_wide):
            m.d.comb += layernorm.i.payload.eq(Cat(ln_half, idata.payload.data))
        with m.Else():
            for lane in range(n):
                m.d.comb += layernorm.i.payload[lane].eq(
                    idata.payload.data[8 * lane:8 * lane + 8].as_signed())
        with m.If(run_layernorm):
            with m.If(run_ln_wide & ~ln_half_full):
                m.d.comb += idata.ready.eq(1)
                with m.If(idata.valid):
                    m.d.sync += [ln_half.eq(idata.payload.data), ln_half_full.eq(1)]
            with m.Else():
                m.d.comb += [layernorm.i.valid.eq(idata.valid), idata.ready.eq(layernorm.i.ready)]
                with m.If(idata.valid & layernorm.i.ready):
                    m.d.sync += ln_half_full.eq(0)
        with m.If(control.start):
            m.d.sync += ln_half_full.eq(0)
        with m.If(run_activation):
            m.d.comb += [act.i.payload.eq(idata.payload.data), act.i.valid.eq(idata.valid),
                         idata.ready.eq(act.i.ready)]
        with m.Else():
            wiring.connect(m, post.act_i, act.i)

        # Row-wise outputs to their destination rows; GEMM and REQUANT write through the post.
        v_out = Signal(data.ArrayLayout(8, n))
        v_valid = Signal()
        v_ready = Signal()
        with m.If(run_softmax):
            m.d.comb += [v_out.eq(softmax.o.payload.probs), v_valid.eq(softmax.o.valid),
                         softmax.o.ready.eq(v_ready)]
        with m.If(run_layernorm):
            m.d.comb += [v_out.eq(layernorm.o.payload), v_valid.eq(layernorm.o.valid),
                         layernorm.o.ready.eq(v_ready)]
        with m.If(run_activation):
            m.d.comb += [v_out.eq(act.o.payload), v_valid.eq(act.o.valid), act.o.ready.eq(v_ready)]
        with m.Else():
            wiring.connect(m, act.o, post.act_o)
        d_row = Signal(16)
        d_word = Signal(16)
        d_ptr = Signal(16)
        v_done = Signal()
        with m.If(settled(m, is_post, "run_post")):
            wiring.connect(m, post.write, wiring.flipped(self.write))
        with m.Else():
            m.d.comb += [
                self.write.valid.eq(v_valid),
                self.write.payload.bank.eq(v.dst_bank),
                self.write.payload.addr.eq(d_ptr + d_word),
                self.write.payload.data.eq(v_out),
                v_ready.eq(self.write.ready),
            ]
        with m.If(control.start):
            m.d.sync += [d_row.eq(0), d_word.eq(0), d_ptr.eq(v.dst_base)]
        with m.Elif(v_valid & v_ready):
            with m.If(d_word == words_last):
                m.d.sync += [d_word.eq(0), d_row.eq(d_row + 1), d_ptr.eq(d_ptr + v.dst_stride)]
                with m.If(d_row == rows_last):
                    m.d.comb += v_done.eq(1)
            with m.Else():
                m.d.sync += d_word.eq(d_word + 1)
        softmax_error = is_softmax & softmax.o.valid & softmax.o.ready & softmax.o.payload.error

        # Row descriptors for softmax and LayerNorm.
        cmd_row = Signal(16)
        cmd_active = Signal()
        m.d.comb += [
            softmax.cmd.payload.count.eq(row_elements),
            softmax.cmd.payload.length.eq(v.length),
            softmax.cmd.payload.causal.eq(v.causal),
            softmax.cmd.payload.row.eq(v.row_start + cmd_row),
            softmax.cmd.payload.offset.eq(v.offset),
            layernorm.cmd.payload.n.eq(row_elements),
            layernorm.cmd.payload.rms.eq(v.rms),
            layernorm.cmd.payload.eps.eq(v.eps),
            layernorm.cmd.payload.gamma_frac.eq(v.gamma_frac),
        ]
        cmd_taken = Signal()
        with m.If(cmd_active & is_softmax):
            m.d.comb += [softmax.cmd.valid.eq(1), cmd_taken.eq(softmax.cmd.ready)]
        with m.If(cmd_active & is_layernorm):
            m.d.comb += [layernorm.cmd.valid.eq(1), cmd_taken.eq(layernorm.cmd.ready)]
        with m.If(cmd_taken):
            m.d.sync += cmd_row.eq(cmd_row + 1)
            with m.If(cmd_row == rows_last):
                m.d.sync += cmd_active.eq(0)

        # WGT words to the weights (direct or transposed), the parameter FIFO (10- or 13-word
        # sets, decoded to one format), the residual FIFO, the table loader.
        wdata = wgt_reader.data
        collected = Signal(range(PARAM_WORDS_WIDE))
        param_words = Signal(PARAM_WORDS_WIDE * word_bits)
        param_last = settled(m, Mux(wide_params, PARAM_WORDS_WIDE - 1, PARAM_WORDS - 1),
                             "param_last")
        param_set = decode_param_words(m, Cat(param_words[word_bits:], wdata.payload.data),
                                       wide_params, n)
        m.d.comb += [transposer.i.payload.eq(wdata.payload.data),
                     tables.words.payload.eq(wdata.payload.data)]
        with m.If(g.transpose_w):
            wiring.connect(m, transposer.o, engine.weights)
        with m.Else():
            m.d.comb += engine.weights.payload.eq(wdata.payload.data)
        with m.Switch(wdata.payload.tag):
            with m.Case(_TAG_WEIGHT):
                with m.If(g.transpose_w):
                    m.d.comb += [transposer.i.valid.eq(wdata.valid),
                                 wdata.ready.eq(transposer.i.ready)]
                with m.Else():
                    m.d.comb += [engine.weights.valid.eq(wdata.valid),
                                 wdata.ready.eq(engine.weights.ready)]
            with m.Case(_TAG_PARAM):
                last = collected == param_last
                m.d.comb += [
                    wdata.ready.eq(~last | param_fifo.w_rdy),
                    param_fifo.w_data.eq(param_set),
                    param_fifo.w_en.eq(wdata.valid & last),
                ]
                with m.If(wdata.valid & wdata.ready):
                    m.d.sync += [param_words.eq(Cat(param_words[word_bits:], wdata.payload.data)),
                                 collected.eq(Mux(last, 0, collected + 1))]
            with m.Case(_TAG_TABLE):
                m.d.comb += [tables.words.valid.eq(wdata.valid), wdata.ready.eq(tables.words.ready)]
            with m.Case(_TAG_RESIDUAL):
                m.d.comb += [residual_fifo.w_data.eq(wdata.payload.data),
                             residual_fifo.w_en.eq(wdata.valid), wdata.ready.eq(residual_fifo.w_rdy)]

        # -- Sequencers ----------------------------------------------------------------------
        seq_start = Signal()
        m.d.comb += tables.start.eq(seq_start & is_table)
        with m.If(seq_start & (is_softmax | is_layernorm)):
            m.d.sync += [cmd_row.eq(0), cmd_active.eq(1)]
        # Weight sequencer: parameters, pass commands, weight rows, or the table's words.
        w_j = Signal(16)
        w_kt = Signal(16)
        w_i = Signal(16)
        w_ptr = Signal(16)
        w_tile_base = Signal(16)
        p_ptr = Signal(16)
        c_ptr = Signal(16)      # the class-1 parameters (gemm_cls)
        c_phase = Signal()      # reading tile w_j's class-1 set (before its normal one)
        tiles = settled(m, Mux(is_gemm, g.n_tiles, rq_tiles), "tiles")
        tiles_last = settled(m, Mux(is_gemm, g.n_tiles, rq_tiles) - 1, "tiles_last")
        res_rows_last = settled(m, Mux(is_gemm, g.m, v.rows) - 1, "res_rows_last")
        res_stride = Mux(is_gemm, g.res_stride, v.res_stride)
        m.d.comb += [
            engine.cmd.payload.mode.eq(g.mode),
            engine.cmd.payload.rows.eq(g.m),
            engine.cmd.payload.accumulate.eq(w_kt != 0),
            engine.cmd.payload.emit.eq(w_kt == k_last),
        ]
        with m.FSM(name="weight_sequencer"):
            with m.State("IDLE"):
                with m.If(seq_start & is_post):
                    m.d.sync += [w_j.eq(0), w_kt.eq(0), w_i.eq(0),
                                 p_ptr.eq(Mux(is_gemm, g.param_base, v.param_base)),
                                 c_ptr.eq(g.cls_param_base), c_phase.eq(gemm_cls),
                                 w_tile_base.eq(g.w_base)]
                    with m.If(is_gemm & raw):
                        m.next = "CMD"
                    with m.Else():
                        m.next = "PARAMS"
                with m.If(seq_start & is_table):
                    m.d.sync += [w_i.eq(0), w_ptr.eq(tbl.base)]
                    m.next = "TABLE"
            with m.State("PARAMS"):
                m.d.comb += [wgt_reader.addr.valid.eq(1),
                             wgt_reader.addr.payload.addr.eq(Mux(c_phase, c_ptr, p_ptr)),
                             wgt_reader.addr.payload.tag.eq(_TAG_PARAM)]
                with m.If(wgt_reader.addr.ready):
                    m.d.sync += w_i.eq(w_i + 1)
                    with m.If(c_phase):
                        m.d.sync += c_ptr.eq(c_ptr + 1)
                    with m.Else():
                        m.d.sync += p_ptr.eq(p_ptr + 1)
                    with m.If(w_i == param_last):
                        m.d.sync += w_i.eq(0)
                        with m.If(c_phase):
                            # Tile j's class-1 set is in; its normal set follows.
                            m.d.sync += c_phase.eq(0)
                        with m.Elif(is_gemm):
                            m.d.sync += c_phase.eq(gemm_cls)
                            m.next = "CMD"
                        with m.Elif(v.residual):
                            # REQUANT: tile j's residual words follow its parameters.
                            m.d.sync += w_ptr.eq(v.res_base + w_j)
                            m.next = "RESIDUAL"
                        with m.Else():
                            m.d.sync += w_j.eq(w_j + 1)
                            with m.If(w_j == tiles_last):
                                m.next = "IDLE"
            with m.State("RESIDUAL"):
                m.d.comb += [wgt_reader.addr.valid.eq(1), wgt_reader.addr.payload.addr.eq(w_ptr),
                             wgt_reader.addr.payload.tag.eq(_TAG_RESIDUAL)]
                with m.If(wgt_reader.addr.ready):
                    m.d.sync += [w_ptr.eq(w_ptr + res_stride), w_i.eq(w_i + 1)]
                    with m.If(w_i == res_rows_last):
                        m.d.sync += w_i.eq(0)
                        with m.If(is_gemm):
                            # GEMM: w_j already counts the tile whose weights were just read.
                            with m.If(w_j == tiles):
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "PARAMS"
                        with m.Else():
                            m.d.sync += w_j.eq(w_j + 1)
                            with m.If(w_j == tiles_last):
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "PARAMS"
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
                        with m.If(w_kt == k_last):
                            m.d.sync += [w_kt.eq(0), w_j.eq(w_j + 1),
                                         w_tile_base.eq(w_tile_base
                                                        + Mux(g.transpose_w, g.w_stride << log_n, 1))]
                            with m.If(gemm_res):
                                # Tile j's residual rows, taken as its rows come out.
                                m.d.sync += w_ptr.eq(g.res_base + w_j)
                                m.next = "RESIDUAL"
                            with m.Elif(w_j == n_last):
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
                    with m.If(w_i == table_words_last):
                        m.next = "IDLE"

        # INP sequencer: A rows for every GEMM pass, or the rows of a row-wise op, or the
        # INT32 rows of REQUANT in tile order (tile j: 4 words of every row).
        a_j = Signal(16)
        a_kt = Signal(16)
        a_row = Signal(16)
        a_ptr = Signal(16)
        a_word = Signal(16)
        a_quarter = Signal(2)
        m.d.comb += inp_reader.addr.payload.tag.eq(0)
        with m.FSM(name="inp_sequencer"):
            with m.State("IDLE"):
                with m.If(seq_start & is_gemm):
                    m.d.sync += [a_j.eq(0), a_kt.eq(0), a_row.eq(0), a_ptr.eq(g.a_base)]
                    m.next = "GEMM"
                with m.If(seq_start & is_vector):
                    m.d.sync += [a_row.eq(0), a_word.eq(0), a_quarter.eq(0), a_j.eq(0),
                                 a_ptr.eq(v.src_base)]
                    with m.If(is_requant):
                        m.next = "REQUANT"
                    with m.Else():
                        m.next = "ROWS"
            with m.State("GEMM"):
                m.d.comb += [inp_reader.addr.valid.eq(1), inp_reader.addr.payload.addr.eq(a_ptr)]
                with m.If(inp_reader.addr.ready):
                    m.d.sync += [a_ptr.eq(a_ptr + g.a_stride), a_row.eq(a_row + 1)]
                    with m.If(a_row == m_last):
                        m.d.sync += a_row.eq(0)
                        with m.If(a_kt == k_last):
                            m.d.sync += [a_kt.eq(0), a_j.eq(a_j + 1), a_ptr.eq(g.a_base)]
                            with m.If(a_j == n_last):
                                m.next = "IDLE"
                        with m.Else():
                            m.d.sync += [a_kt.eq(a_kt + 1), a_ptr.eq(g.a_base + a_kt + 1)]
            with m.State("ROWS"):
                m.d.comb += [inp_reader.addr.valid.eq(1),
                             inp_reader.addr.payload.addr.eq(a_ptr + a_word)]
                with m.If(inp_reader.addr.ready):
                    m.d.sync += a_word.eq(a_word + 1)
                    with m.If(a_word == row_in_words_last):
                        m.d.sync += [a_word.eq(0), a_row.eq(a_row + 1),
                                     a_ptr.eq(a_ptr + v.src_stride)]
                        with m.If(a_row == rows_last):
                            m.next = "IDLE"
            with m.State("REQUANT"):
                m.d.comb += [inp_reader.addr.valid.eq(1),
                             inp_reader.addr.payload.addr.eq(a_ptr + a_word + a_quarter)]
                with m.If(inp_reader.addr.ready):
                    m.d.sync += a_quarter.eq(a_quarter + 1)
                    with m.If(a_quarter == 3):
                        m.d.sync += [a_row.eq(a_row + 1), a_ptr.eq(a_ptr + v.src_stride)]
                        with m.If(a_row == rows_last):
                            m.d.sync += [a_row.eq(0), a_ptr.eq(v.src_base), a_word.eq(a_word + 4),
                                         a_j.eq(a_j + 1)]
                            with m.If(a_j == rq_tiles_last):
                                m.next = "IDLE"

        # -- Instruction FSM -----------------------------------------------------------------
        with m.FSM(name="compute"):
            with m.State("IDLE"):
                with m.If(control.start):
                    with m.If(opcode == Opcode.NOP):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(check.done):
                    with m.If(field_bad):
                        m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.BAD_FIELD)]
                        m.next = "DONE"
                    with m.Elif(check.bad):
                        m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.ADDRESS)]
                        m.next = "DONE"
                    with m.Else():
                        m.d.comb += [seq_start.eq(1), post.start.eq(is_post)]
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(post.engine_error):
                    m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.ENGINE)]
                with m.Elif(post.shift_error | softmax_error):
                    m.d.comb += [self.error.eq(1), self.error_code.eq(ErrorCode.BAD_FIELD)]
                finished = Mux(is_post, post.done, Mux(is_table, tables.done, v_done))
                with m.If(finished):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += control.done.eq(1)
                m.next = "IDLE"
        return m
