"""The accelerator core: dispatcher, load/compute/store units, on-chip buffers, counters."""

from amaranth.hdl import Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..isa import Bank, Instruction, Opcode
from ..scheduler import Scheduler, SchedulerRequest, SchedulerResponse, batch_word_layout
from .compute_unit import ComputeUnit, shared_pe_modules
from .load_unit import LoadUnit
from .memory_port import memory_port_signature
from .status import COUNTER_BASE, Counter, ErrorCode, Register
from .store_unit import StoreUnit


__all__ = ["Core"]


class Core(wiring.Component):
    """The Jalapeño core (see ``docs/core.md``).

    Instructions arrive on ``insn``; the dispatcher routes LOAD to the load unit,
    STORE to the store unit, the rest (GEMM, SOFTMAX, LAYERNORM, ACTIVATION, REQUANT,
    TABLE, NOP) to the compute unit, each through its own
    queue, so the three units run concurrently and synchronise only through
    dependency tokens (four counters: load->compute, compute->load, compute->store,
    store->compute). SYNC waits until every queue and unit is empty, then counts in
    the SYNCS counter. An unknown opcode raises UNKNOWN_OPCODE.

    The first error is latched (code and unit, register STATUS / ERROR_UNIT); the
    dispatcher then takes no more instructions, the units finish what they hold
    (failed instructions are skipped, their tokens still pushed), and the core goes
    idle with the error set until ``soft_reset`` (one cycle) clears everything but
    the buffer contents.

    Parameters
    ----------
    lanes : int
        Array size (rows = cols = lanes), buffer word and memory port width in bytes.
    inp_words, wgt_words, out_words : int
        Buffer depths in words (at most 65536).
    max_rows : int
        Largest m of a GEMM (the engine's accumulator depth).
    max_length, max_hidden : int
        Longest softmax row and LayerNorm row (elements).
    dram_words : int
        External memory size in words (accesses beyond it raise ADDRESS).
    fp8 : bool
        Build the FP8 matmul modes.
    queue_depth : int
        Instructions per unit queue.
    shared_pe_module : bool
        See :class:`rtl.matmul.engine.MatmulEngine` (True for Verilator and synthesis).
    vector_units : bool
        Build the softmax, LayerNorm and activation units (and TABLE). Without them
        SOFTMAX, LAYERNORM, ACTIVATION, TABLE and the REQUANT_ACT post op raise
        BAD_FIELD (for small FPGAs).
    requantizer : bool
        Build the post-processor's requantizers. Without them GEMM writes only RAW
        results; the REQUANT and REQUANT_ACT post ops and REQUANT raise BAD_FIELD.
    scheduler : bool
        Build the dynamic-batching scheduler. Without it ``req`` is never ready, ``resp``
        and ``batch`` never valid, and the scheduler's registers read 0.
    pe_multiplier : str, optional
        The array's PEs multiply with a registered multiplier (``"mult18x18d"``: the
        ECP5 DSP with its own registers; see :class:`rtl.matmul.engine.MatmulEngine`).
        Same results; a GEMM pass takes one cycle more. With ``range_check_stage`` the
        range checks' partial products use the same multiplier.
    accumulator_stage : bool
        The matmul engine adds to its accumulator rows in a stage of their own (see
        :class:`rtl.matmul.engine.MatmulEngine`). Same results; a GEMM pass takes one
        cycle more.
    broadcast_stage : bool
        The matmul engine's array broadcasts (``advance``, the weight rows) start at
        registers, its result rows wait in a two-row buffer (see
        :class:`rtl.matmul.engine.MatmulEngine`). Same results; a GEMM pass takes one
        cycle more.
    counter_stage : bool
        Each counter's increment is registered before it is added: no path runs from the
        units' state (the queues' levels into ``idle``, say) through a 32-bit adder (the
        ULX3S core's critical path at 83 MHz with some placements, 12.3 ns). A counter
        then shows a cycle's events a cycle later (over the link, register reads come
        thousands of cycles after the core goes idle).
    read_stage : bool
        The buffers' reads (INP and WGT for the compute unit, OUT for the store unit)
        take their address from a register and put their word into one (see
        :class:`rtl.core.buffer_reader.BufferReader`, ``address_stage`` and
        ``data_stage``). Same results; a word comes two cycles later.
    range_check_stage : bool
        The units' range checks compute their product in a stage of its own (see
        :class:`rtl.core.range_check.RangeCheck`). Same results; every LOAD, STORE and
        compute instruction takes one cycle more.

    The ``CONFIG`` register tells the host what was built: bit 0 ``fp8``, bit 1
    ``vector_units``, bit 2 ``requantizer``, bit 3 ``scheduler``.

    Members
    -------
    insn : In(stream.Signature(Instruction))
    mem : Out(memory_port_signature(8 * lanes))
    reg_addr : In(8); reg_data : Out(32); reg_wdata : In(32); reg_we : In(1)
        Combinational register read (``rtl.core.status.Register`` and the counters);
        a write (``reg_we``) to the scheduler's configuration registers.
    req, resp, batch, done
        The dynamic-batching scheduler in front of the core (:class:`rtl.scheduler.Scheduler`):
        the host submits requests on ``req`` (answered on ``resp``), reads each batch the
        scheduler forms on ``batch``, runs the batch's program on the core and reports
        the batch's tag on ``done`` (``docs/core.md``, "Serving").
    soft_reset : In(1)
    idle, error : Out(1)
    """

    def __init__(self, *, lanes=16, inp_words=16384, wgt_words=16384, out_words=16384,
                 max_rows=512, dram_words=1 << 24, fp8=True, queue_depth=32,
                 max_length=512, max_hidden=1024, sched_queue_depth=32, sched_inflight=4,
                 shared_pe_module=False, vector_units=True, requantizer=True, scheduler=True,
                 pe_multiplier=None, accumulator_stage=False, range_check_stage=False,
                 broadcast_stage=False, read_stage=False, counter_stage=False):
        if lanes not in (4, 8, 16, 32):
            raise ValueError(f"lanes must be 4, 8, 16 or 32, not {lanes!r}")
        for name, value in (("inp_words", inp_words), ("wgt_words", wgt_words),
                            ("out_words", out_words)):
            if not 1 <= value <= 65536:
                raise ValueError(f"{name} must be 1..65536, not {value!r}")
        self.lanes = lanes
        self.depths = {Bank.INP: inp_words, Bank.WGT: wgt_words, Bank.OUT: out_words}
        self.max_rows = max_rows
        self.dram_words = dram_words
        self.fp8 = bool(fp8)
        self.queue_depth = queue_depth
        self.max_length = max_length
        self.max_hidden = max_hidden
        self.sched_queue_depth = sched_queue_depth
        self.sched_inflight = sched_inflight
        self._shared_pe_module = shared_pe_module
        self._pe_multiplier = pe_multiplier
        self._accumulator_stage = bool(accumulator_stage)
        self._range_check_stage = bool(range_check_stage)
        # The range checks' partial products use the PEs' registered multiplier, if any.
        self._range_check_multiplier = pe_multiplier or "behavioral"
        self._broadcast_stage = bool(broadcast_stage)
        self._read_stage = bool(read_stage)
        self._counter_stage = bool(counter_stage)
        self.vector_units = bool(vector_units)
        self.requantizer = bool(requantizer)
        self.scheduler = bool(scheduler)
        super().__init__({
            "insn": In(stream.Signature(Instruction)),
            "mem": Out(memory_port_signature(8 * lanes)),
            "reg_addr": In(8),
            "reg_data": Out(32),
            "reg_wdata": In(32),
            "reg_we": In(1),
            "req": In(stream.Signature(SchedulerRequest)),
            "resp": Out(stream.Signature(SchedulerResponse)),
            "batch": Out(stream.Signature(batch_word_layout(sched_queue_depth, sched_inflight))),
            "done": In(stream.Signature(range(sched_inflight))),
            "soft_reset": In(1),
            "idle": Out(1),
            "error": Out(1),
        })

    def _compute_unit(self):
        return ComputeUnit(lanes=self.lanes, depths=self.depths, max_rows=self.max_rows,
                           fp8=self.fp8, shared_pe_module=self._shared_pe_module,
                           max_length=self.max_length, max_hidden=self.max_hidden,
                           vector_units=self.vector_units, requantizer=self.requantizer,
                           pe_multiplier=self._pe_multiplier,
                           accumulator_stage=self._accumulator_stage,
                           range_check_stage=self._range_check_stage,
                           range_check_multiplier=self._range_check_multiplier,
                           broadcast_stage=self._broadcast_stage,
                           read_stage=self._read_stage)

    def verilog_modules(self):
        """``{name: component}`` of the Verilog modules the core instantiates."""
        return shared_pe_modules(self.lanes, self.fp8, self._shared_pe_module, self._pe_multiplier)

    def elaborate(self, platform):
        m = Module()
        word_bits = 8 * self.lanes
        n_counters = len(Counter)

        # -- Buffers -------------------------------------------------------------------------
        memories = {}
        for bank, depth in self.depths.items():
            mem = Memory(shape=word_bits, depth=depth, init=[])
            m.submodules[f"{bank.name.lower()}_buffer"] = mem
            memories[bank] = (mem.write_port(), mem.read_port())

        # -- Units ---------------------------------------------------------------------------
        counters = Signal(data.ArrayLayout(32, n_counters))
        m.submodules.load = load = LoadUnit(
            word_bits=word_bits, depths=self.depths, dram_words=self.dram_words,
            range_check_stage=self._range_check_stage,
            range_check_multiplier=self._range_check_multiplier)
        m.submodules.compute = compute = self._compute_unit()
        m.submodules.store = store = StoreUnit(
            word_bits=word_bits, out_words=self.depths[Bank.OUT], dram_words=self.dram_words,
            counters=n_counters, range_check_stage=self._range_check_stage,
            range_check_multiplier=self._range_check_multiplier, read_stage=self._read_stage)
        wiring.connect(m, load.rd_req, wiring.flipped(self.mem.rd_req))
        wiring.connect(m, wiring.flipped(self.mem.rd_data), load.rd_data)
        wiring.connect(m, store.wr_req, wiring.flipped(self.mem.wr_req))
        wiring.connect(m, store.wr_data, wiring.flipped(self.mem.wr_data))
        wiring.connect(m, wiring.flipped(self.mem.wr_ack), store.wr_ack)
        m.d.comb += store.counters.eq(counters)

        # Read ports: INP and WGT belong to compute, OUT to store. They read every cycle:
        # a unit's reader takes a word only in the cycle after it issued the address, so
        # its enable would only fan out to every block RAM of the buffer (on the ULX3S a
        # critical path, 13.3 ns, mostly routing, with some placements).
        for bank, (addr, rdata) in ((Bank.INP, (compute.inp_addr, compute.inp_data)),
                                    (Bank.WGT, (compute.wgt_addr, compute.wgt_data)),
                                    (Bank.OUT, (store.out_addr, store.out_data))):
            read = memories[bank][1]
            m.d.comb += [read.addr.eq(addr), rdata.eq(read.data)]
        # Write ports: compute first, the load unit when compute leaves the bank alone.
        cw, lw = compute.write, load.write
        m.d.comb += [cw.ready.eq(1),
                     lw.ready.eq(~(cw.valid & (cw.payload.bank == lw.payload.bank)))]
        for bank, (write, _) in memories.items():
            from_compute = cw.valid & (cw.payload.bank == bank)
            from_load = lw.valid & lw.ready & (lw.payload.bank == bank)
            m.d.comb += [
                write.en.eq(from_compute | from_load),
                write.addr.eq(Mux(from_compute, cw.payload.addr, lw.payload.addr)),
                write.data.eq(Mux(from_compute, cw.payload.data, lw.payload.data)),
            ]

        # -- Tokens --------------------------------------------------------------------------
        token_overflow = Signal()
        links = (  # (pusher, taker, available)
            (load.push_next, compute.prev_take, compute.prev_available),      # load -> compute
            (compute.push_prev, load.next_take, load.next_available),         # compute -> load
            (compute.push_next, store.prev_take, store.prev_available),       # compute -> store
            (store.push_prev, compute.next_take, compute.next_available),     # store -> compute
        )
        for i, (push, take, available) in enumerate(links):
            count = Signal(8, name=f"tokens_{i}")
            m.d.comb += available.eq(count != 0)
            with m.If(push & ~take):
                with m.If(count == 255):
                    m.d.comb += token_overflow.eq(1)
                with m.Else():
                    m.d.sync += count.eq(count + 1)
            with m.Elif(take & ~push):
                m.d.sync += count.eq(count - 1)

        # -- Dispatcher ----------------------------------------------------------------------
        queues = {}
        for name, unit in (("load", load), ("compute", compute), ("store", store)):
            fifo = SyncFIFO(width=Instruction.size, depth=self.queue_depth)
            m.submodules[f"{name}_queue"] = fifo
            m.d.comb += [unit.insn.payload.eq(fifo.r_data), unit.insn.valid.eq(fifo.r_rdy),
                         fifo.r_en.eq(unit.insn.ready), fifo.w_data.eq(self.insn.payload)]
            queues[name] = fifo
        # Each queue's room in a register equal to its ``w_rdy`` (the level it will have
        # next cycle is not the depth), so the dispatcher's ``ready`` does not run from the
        # queue's level counter through the level compare (the ULX3S core's critical path
        # into the link's instruction FIFO).
        room = {}
        for name, fifo in queues.items():
            pushed = fifo.w_en & fifo.w_rdy
            popped = fifo.r_en & fifo.r_rdy
            room[name] = Signal(init=1, name=f"{name}_room")
            m.d.sync += room[name].eq(~(((fifo.level == self.queue_depth) & ~popped)
                                        | ((fifo.level == self.queue_depth - 1)
                                           & pushed & ~popped)))
        error_latched = Signal()
        error_code = Signal(4)
        error_unit = Signal(2)
        opcode = self.insn.payload.header.opcode
        target = Signal(range(4))  # 0 load, 1 compute, 2 store, 3 none (SYNC / unknown)
        with m.Switch(opcode):
            with m.Case(Opcode.LOAD):
                m.d.comb += target.eq(0)
            with m.Case(Opcode.STORE):
                m.d.comb += target.eq(2)
            with m.Case(Opcode.GEMM, Opcode.TABLE, Opcode.NOP, Opcode.SOFTMAX, Opcode.LAYERNORM,
                        Opcode.ACTIVATION, Opcode.REQUANT):
                m.d.comb += target.eq(1)
            with m.Default():
                m.d.comb += target.eq(3)
        units_empty = (load.empty & compute.empty & store.empty
                       & ~load.busy & ~compute.busy & ~store.busy
                       & ~load.waiting & ~store.waiting & ~compute.waiting_prev
                       & ~compute.waiting_next
                       & ~queues["load"].r_rdy & ~queues["compute"].r_rdy & ~queues["store"].r_rdy)
        dispatched = Signal()
        unknown = Signal()
        sync_done = Signal()
        # SYNC waits for ``units_empty`` of the cycle before, in a register (the queues'
        # levels through ``units_empty`` into the link's instruction FIFO were the ULX3S
        # core's path at 90 MHz with some placements, 11.2 ns). Only a dispatch makes an
        # empty core busy, so "empty then and nothing dispatched then" means empty now; a
        # SYNC completes at most a cycle later than with the test of this cycle.
        were_empty = Signal()
        m.d.sync += were_empty.eq(units_empty & ~dispatched)
        with m.If(~error_latched & self.insn.valid):
            with m.Switch(target):
                for i, name in enumerate(("load", "compute", "store")):
                    with m.Case(i):
                        m.d.comb += [self.insn.ready.eq(room[name]),
                                     queues[name].w_en.eq(1)]
                with m.Case(3):
                    with m.If(opcode == Opcode.SYNC):
                        m.d.comb += [self.insn.ready.eq(were_empty), sync_done.eq(were_empty)]
                    with m.Else():
                        m.d.comb += [self.insn.ready.eq(1), unknown.eq(1)]
        m.d.comb += dispatched.eq(self.insn.valid & self.insn.ready & ~unknown)

        # -- Errors --------------------------------------------------------------------------
        sources = (  # (pulse, code, unit) in priority order
            (unknown, ErrorCode.UNKNOWN_OPCODE, 0),
            (token_overflow, ErrorCode.TOKEN_OVERFLOW, 0),
            (load.error, load.error_code, 1),
            (compute.error, compute.error_code, 2),
            (store.error, store.error_code, 3),
        )
        with m.If(~error_latched):
            for pulse, code, unit in reversed(sources):
                with m.If(pulse):
                    m.d.sync += [error_latched.eq(1), error_code.eq(code), error_unit.eq(unit)]

        # -- Counters ------------------------------------------------------------------------
        idle = Signal()
        m.d.comb += [idle.eq(units_empty & ~self.insn.valid), self.idle.eq(idle),
                     self.error.eq(error_latched)]
        blocked = Signal()
        m.d.comb += blocked.eq(~units_empty & ~load.busy & ~compute.busy & ~store.busy
                               & ~self.insn.valid)
        increments = {
            Counter.CYCLES: ~idle,
            Counter.MAC_CYCLES: compute.mac,
            Counter.COMPUTE_BUSY: compute.busy,
            Counter.COMPUTE_WAIT_LOAD: compute.waiting_prev,
            Counter.COMPUTE_WAIT_STORE: compute.waiting_next,
            Counter.COMPUTE_WAIT_POST: compute.post_stall,
            Counter.COMPUTE_WAIT_HOST: ~idle & compute.empty & ~self.insn.valid,
            Counter.LOAD_WAIT_MEMORY: load.wait_memory,
            Counter.STORE_WAIT_MEMORY: store.wait_memory,
            Counter.LOAD_WORDS: load.word,
            Counter.STORE_WORDS: store.word,
            Counter.INSTRUCTIONS: dispatched,
            Counter.SATURATIONS: compute.saturations,
            Counter.SYNCS: sync_done,
        }
        for counter, increment in increments.items():
            if self._counter_stage:
                step = Signal.like(Value.cast(increment), name=f"step_{counter.name.lower()}")
                m.d.sync += step.eq(increment)
                increment = step
            m.d.sync += counters[counter].eq(counters[counter] + increment)

        # -- Scheduler -----------------------------------------------------------------------
        sched_registers = {}
        if self.scheduler:
            m.submodules.scheduler = scheduler = Scheduler(queue_depth=self.sched_queue_depth,
                                                           max_inflight=self.sched_inflight)
            wiring.connect(m, wiring.flipped(self.req), scheduler.req)
            wiring.connect(m, scheduler.resp, wiring.flipped(self.resp))
            wiring.connect(m, scheduler.batch, wiring.flipped(self.batch))
            wiring.connect(m, wiring.flipped(self.done), scheduler.done)
            config = {
                Register.SCHED_MAX_BATCH_ROWS: (scheduler.max_batch_rows, 64),
                Register.SCHED_MAX_WAIT_CYCLES: (scheduler.max_wait_cycles, 1000),
                Register.SCHED_WORK_CONSERVING: (scheduler.work_conserving, 0),
                Register.SCHED_AGING_CYCLES: (scheduler.aging_cycles, 1000),
            }
            for register, (port, initial) in config.items():
                value = Signal(len(port), name=register.name.lower(), init=initial)
                m.d.comb += port.eq(value)
                with m.If(self.reg_we & (self.reg_addr == register)):
                    m.d.sync += value.eq(self.reg_wdata)
            sched_registers = {
                Register.SCHED_MAX_BATCH_ROWS: scheduler.max_batch_rows,
                Register.SCHED_MAX_WAIT_CYCLES: scheduler.max_wait_cycles,
                Register.SCHED_WORK_CONSERVING: scheduler.work_conserving,
                Register.SCHED_AGING_CYCLES: scheduler.aging_cycles,
                Register.SCHED_NOW: scheduler.now,
                Register.SCHED_ACCEPTED: scheduler.accepted,
                Register.SCHED_REJECTED: scheduler.rejected,
                Register.SCHED_TIMED_OUT: scheduler.timed_out,
                Register.SCHED_BATCHES: scheduler.batches,
                Register.SCHED_BATCHED_ROWS: scheduler.batched_rows,
                Register.SCHED_MAX_WAIT: scheduler.max_wait,
                Register.SCHED_WAITING: scheduler.waiting,
                Register.SCHED_BAD_DONE: scheduler.bad_done,
            }
        else:
            m.d.comb += [self.req.ready.eq(0), self.resp.valid.eq(0), self.batch.valid.eq(0),
                         self.done.ready.eq(1)]

        # -- Registers -----------------------------------------------------------------------
        registers = {
            Register.STATUS: idle | (error_latched << 1) | (error_code << 4) | (blocked << 8),
            Register.ERROR_UNIT: error_unit,
            Register.LANES: self.lanes,
            Register.CONFIG: (int(self.fp8) | (int(self.vector_units) << 1)
                              | (int(self.requantizer) << 2) | (int(self.scheduler) << 3)),
            Register.INP_WORDS: self.depths[Bank.INP],
            Register.WGT_WORDS: self.depths[Bank.WGT],
            Register.OUT_WORDS: self.depths[Bank.OUT],
            Register.MAX_ROWS: self.max_rows,
            Register.MAX_LENGTH: self.max_length,
            Register.MAX_HIDDEN: self.max_hidden,
            **sched_registers,
        }
        m.d.comb += self.reg_data.eq(0)
        with m.Switch(self.reg_addr):
            for register, value in registers.items():
                with m.Case(register):
                    m.d.comb += self.reg_data.eq(value)
            for counter in Counter:
                with m.Case(COUNTER_BASE + counter):
                    m.d.comb += self.reg_data.eq(counters[counter])
        return ResetInserter(self.soft_reset)(m)

