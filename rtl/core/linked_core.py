"""The core behind the UART host link, with its external memory on chip: a board's payload."""

import enum

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..link.uart_bridge import UartHostBridge
from .compute_unit import shared_pe_modules
from .core import Core
from .local_memory import LocalMemory
from .status import Register


__all__ = ["LinkedCore", "CONTROL_REGISTER", "SCHED_LINK_BASE", "SchedLinkRegister",
           "batch_pieces", "batch_fifo_depth", "register_count"]

#: Writing 1 to bit 0 of this register soft-resets the core (over the link).
CONTROL_REGISTER = 63

#: The core's registers are 0 .. 63; the link's scheduler registers follow.
SCHED_LINK_BASE = 64


class SchedLinkRegister(enum.IntEnum):
    """The scheduler's ports as link registers (``docs/link.md``, "The scheduler over the
    link"). They exist only on a core built with the scheduler: without it the bridge has
    64 registers and answers BAD_ADDRESS to these indices."""
    REQUEST = 64   # 64..67, write: request word bits [32i+31:32i]; writing 67 submits it
    DONE = 68      # write: a batch-completion tag
    STATUS = 69    # read: [7:0] responses waiting, [15:8] batch words waiting,
    #                [23:16] request slots free, [31:24] done slots free
    RESPONSE = 70  # read, pops: [31] a response was waiting, [30:0] the response (0 if none)
    INFO = 71      # read: [15:0] scheduler queue depth, [23:16] max in flight, [31:24] batch pieces
    DROPPED = 72   # read: request and done writes dropped: their FIFO was full, or a tag
    #                wider than the scheduler's ``done`` port
    BATCH = 73     # 73.., read: piece i = [31] held word valid, [30:0] bits [31i+30:31i] of the
    #                batch word; reading piece 0 pops the next word into the held register


#: Depths of the FIFOs between the link and the scheduler.
REQUEST_FIFO_DEPTH = 4
DONE_FIFO_DEPTH = 4
RESPONSE_FIFO_DEPTH = 32


def batch_pieces(queue_depth, max_inflight):
    """31-bit pieces (link registers) of one batch word."""
    from ..scheduler import batch_word_layout
    return -(-batch_word_layout(queue_depth, max_inflight).size // 31)


def batch_fifo_depth(queue_depth, max_inflight):
    """Batch words the link buffers: a full queue's segments and a header per batch."""
    return min(queue_depth + max_inflight, 255)


def register_count(scheduler, queue_depth, max_inflight):
    """Registers behind the bridge: the core's 64, plus the scheduler's link registers."""
    if not scheduler:
        return SCHED_LINK_BASE
    return SchedLinkRegister.BATCH + batch_pieces(queue_depth, max_inflight)


class LinkedCore(wiring.Component):
    """:class:`Core` + :class:`LocalMemory` + :class:`rtl.link.uart_bridge.UartHostBridge`.

    The host's link frames map onto the core: WRITE_MEM / READ_MEM reach the on-chip
    memory the core's memory port uses, PUSH_INSN (32-byte instructions) feeds the
    core's instruction port (through a two-entry FIFO: the link's handshake then ends in
    registers instead of running on into the core's dispatcher and its counters, which
    was the ULX3S core's critical path; while the FIFO holds an instruction, STATUS
    reads as neither idle nor blocked), READ_REG / WRITE_REG its registers, and a write of 1 to
    :data:`CONTROL_REGISTER` is a soft reset. ``jalapeno.serial_transport.CoreSerialTransport``
    is the host side. The scheduler's ports are link registers from
    :data:`SCHED_LINK_BASE` on (:class:`SchedLinkRegister`), through FIFOs, so that
    ``jalapeno.serving.Server`` serves over the link; a core built without the scheduler
    has none of them (the bridge answers BAD_ADDRESS).

    Parameters
    ----------
    divisor : int
        Clock cycles per UART bit.
    memory_words : int
        On-chip "external" memory in words (also the core's ``dram_words``).
    **core_args
        :class:`Core` parameters (``lanes``, buffer depths, ``max_rows``, ...).

    Members
    -------
    rx : In(1); tx : Out(1)
        UART pins (idle high).
    error : Out(1)
        The core's error status (for a LED).
    """

    def __init__(self, *, divisor, memory_words=4096, timeout_cycles=None, **core_args):
        self._divisor = divisor
        self._memory_words = memory_words
        self._core_args = dict(core_args)
        self._core_args["dram_words"] = memory_words
        self._timeout = timeout_cycles if timeout_cycles is not None else max(1_000_000, 40 * divisor)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "error": Out(1),
        })

    def verilog_modules(self):
        args = self._core_args
        return shared_pe_modules(args.get("lanes", 16), args.get("fp8", True),
                                 args.get("shared_pe_module", False), args.get("pe_multiplier"))

    def _make_core(self):
        return Core(**self._core_args)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._make_core()
        lanes = core.lanes
        m.submodules.memory = memory = LocalMemory(words=self._memory_words, word_bits=8 * lanes)
        m.submodules.link = link = UartHostBridge(
            self._divisor, word_bytes=lanes, memory_words=self._memory_words,
            register_count=register_count(core.scheduler, core.sched_queue_depth,
                                          core.sched_inflight),
            insn_bytes=32, timeout_cycles=self._timeout)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx), self.error.eq(core.error)]
        wiring.connect(m, core.mem, memory.core)
        m.d.comb += [
            memory.host_write.valid.eq(link.mem_write.valid),
            memory.host_write.payload.address.eq(link.mem_write.payload.address),
            memory.host_write.payload.data.eq(link.mem_write.payload.data),
            link.mem_write.ready.eq(memory.host_write.ready),
        ]
        wiring.connect(m, link.mem_read_address, memory.host_read_address)
        wiring.connect(m, memory.host_read_data, link.mem_read_data)
        # Registers: a read answers two cycles after its address, a write is done a cycle
        # after it is taken; writes go to the core,
        # except the control register and the scheduler's link registers (SCHED_*).
        # A soft reset leaves a register (set the cycle after the write is done): from the
        # register index's comparison it reached every reset of the core in one cycle (the
        # ULX3S core's critical path at 83 MHz with some placements, 13.3 ns).
        soft_reset = Signal()
        m.d.sync += soft_reset.eq(0)
        m.d.comb += core.soft_reset.eq(soft_reset)
        insn_fifo = ResetInserter(soft_reset)(SyncFIFOBuffered(width=len(link.insn.payload),
                                                               depth=2))
        m.submodules.insn_fifo = insn_fifo
        m.d.comb += [
            insn_fifo.w_data.eq(link.insn.payload), insn_fifo.w_en.eq(link.insn.valid),
            link.insn.ready.eq(insn_fifo.w_rdy),
            core.insn.payload.eq(insn_fifo.r_data), core.insn.valid.eq(insn_fifo.r_rdy),
            insn_fifo.r_en.eq(core.insn.ready),
        ]
        # STATUS bits 0 (idle) and 8 (blocked) also wait for the FIFO to be empty.
        status_mask = Mux(insn_fifo.level != 0, ~((1 << 0) | (1 << 8)) & 0xFFFF_FFFF,
                          0xFFFF_FFFF)
        sched = self._scheduler_ports(m, core, soft_reset) if core.scheduler else None
        # A read or a write takes its register index (and the value) into registers and
        # is done a cycle later: the core's register index then always comes from a
        # register (the bridge's index into the core's register multiplexer in one cycle
        # was the ULX3S core's critical path at 75 MHz, 12.9 ns).
        answer = Signal()
        reading = Signal()
        writing = Signal()
        index = Signal.like(link.reg_read_address.payload)
        wdata = Signal(32)
        value = Signal(32)
        busy = answer | reading | writing
        m.d.comb += [link.reg_read_address.ready.eq(~busy),
                     link.reg_write.ready.eq(~busy & ~link.reg_read_address.valid),
                     link.reg_read_data.valid.eq(answer), link.reg_read_data.payload.eq(value),
                     core.reg_addr.eq(index)]
        with m.If(link.reg_read_data.ready & answer):
            m.d.sync += answer.eq(0)
        with m.If(reading):
            m.d.sync += [reading.eq(0), answer.eq(1)]
            with m.If(index < SCHED_LINK_BASE):
                m.d.sync += value.eq(Mux(index == Register.STATUS, core.reg_data & status_mask,
                                         core.reg_data))
            with m.Else():
                if sched is not None:
                    sched["read"](index, value)
                else:   # not reached: the bridge has no registers beyond the core's
                    m.d.sync += value.eq(0)
        with m.Elif(writing):
            m.d.sync += writing.eq(0)
            with m.If(index == CONTROL_REGISTER):
                m.d.sync += soft_reset.eq(wdata[0])
            with m.Elif(index < SCHED_LINK_BASE):
                m.d.comb += [core.reg_wdata.eq(wdata), core.reg_we.eq(1)]
            if sched is not None:
                with m.Else():
                    sched["write"](index, wdata)
        with m.Elif(link.reg_read_address.valid & ~answer):
            m.d.sync += [index.eq(link.reg_read_address.payload), reading.eq(1)]
        with m.Elif(link.reg_write.valid & ~answer):
            m.d.sync += [index.eq(link.reg_write.payload.address),
                         wdata.eq(link.reg_write.payload.data), writing.eq(1)]
        if sched is None:
            m.d.comb += [core.req.valid.eq(0), core.done.valid.eq(0), core.resp.ready.eq(1),
                         core.batch.ready.eq(1)]
        return m

    def _scheduler_ports(self, m, core, soft_reset):
        """FIFOs between the link registers and the core's scheduler ports (docs/link.md,
        "The scheduler over the link"); returns the read and write handlers."""
        fifos = {
            "req": SyncFIFOBuffered(width=len(core.req.payload.as_value()),
                                    depth=REQUEST_FIFO_DEPTH),
            "done": SyncFIFOBuffered(width=len(core.done.payload), depth=DONE_FIFO_DEPTH),
            "resp": SyncFIFOBuffered(width=len(core.resp.payload.as_value()),
                                     depth=RESPONSE_FIFO_DEPTH),
            "batch": SyncFIFOBuffered(width=len(core.batch.payload.as_value()),
                                      depth=batch_fifo_depth(core.sched_queue_depth,
                                                             core.sched_inflight)),
        }
        for name, fifo in fifos.items():   # a soft reset empties them, as it resets the core
            fifos[name] = fifo = ResetInserter(soft_reset)(fifo)
            m.submodules[f"sched_{name}_fifo"] = fifo
        req, done, resp, batch = (fifos[n] for n in ("req", "done", "resp", "batch"))
        m.d.comb += [
            core.req.valid.eq(req.r_rdy), core.req.payload.eq(req.r_data),
            req.r_en.eq(core.req.ready),
            core.done.valid.eq(done.r_rdy), core.done.payload.eq(done.r_data),
            done.r_en.eq(core.done.ready),
            resp.w_en.eq(core.resp.valid), resp.w_data.eq(core.resp.payload),
            core.resp.ready.eq(resp.w_rdy),
            batch.w_en.eq(core.batch.valid), batch.w_data.eq(core.batch.payload),
            core.batch.ready.eq(batch.w_rdy),
        ]
        staged = Signal(96)       # SCHED_REQUEST_0..2
        held = Signal(31 * batch_pieces(core.sched_queue_depth, core.sched_inflight))
        held_valid = Signal()
        dropped = Signal(32)
        pieces = batch_pieces(core.sched_queue_depth, core.sched_inflight)

        def level(fifo):
            return Mux(fifo.level > 255, 255, fifo.level)[:8]

        def space(fifo):
            free = fifo.depth - fifo.level
            return Mux(free > 255, 255, free)[:8]

        def read(index, value):
            with m.Switch(index):
                with m.Case(SchedLinkRegister.STATUS):
                    m.d.sync += value.eq(Cat(level(resp), level(batch), space(req), space(done)))
                with m.Case(SchedLinkRegister.RESPONSE):
                    m.d.comb += resp.r_en.eq(1)
                    padded = Cat(resp.r_data, Const(0, 31 - len(resp.r_data)), 1)
                    m.d.sync += value.eq(Mux(resp.r_rdy, padded, 0))
                with m.Case(SchedLinkRegister.INFO):
                    m.d.sync += value.eq(Cat(Const(core.sched_queue_depth, 16),
                                             Const(core.sched_inflight, 8), Const(pieces, 8)))
                with m.Case(SchedLinkRegister.DROPPED):
                    m.d.sync += value.eq(dropped)
                with m.Case(SchedLinkRegister.BATCH):
                    m.d.comb += batch.r_en.eq(1)
                    word = Mux(batch.r_rdy, batch.r_data, 0)
                    m.d.sync += [held.eq(word), held_valid.eq(batch.r_rdy),
                                 value.eq(Cat(word[:31], batch.r_rdy))]
                for i in range(1, pieces):
                    with m.Case(SchedLinkRegister.BATCH + i):
                        m.d.sync += value.eq(Cat(held[31 * i:31 * i + 31], held_valid))
                with m.Default():   # the write-only registers
                    m.d.sync += value.eq(0)

        def write(address, wdata):
            with m.Switch(address):
                for i in range(3):
                    with m.Case(SchedLinkRegister.REQUEST + i):
                        m.d.sync += staged[32 * i:32 * i + 32].eq(wdata)
                with m.Case(SchedLinkRegister.REQUEST + 3):
                    m.d.comb += [req.w_en.eq(1), req.w_data.eq(Cat(staged, wdata))]
                    with m.If(~req.w_rdy):
                        m.d.sync += dropped.eq(dropped + 1)
                with m.Case(SchedLinkRegister.DONE):
                    # A tag wider than the port is dropped, not truncated into another tag.
                    fits = wdata[len(done.w_data):] == 0
                    m.d.comb += [done.w_en.eq(fits), done.w_data.eq(wdata)]
                    with m.If(~done.w_rdy | ~fits):
                        m.d.sync += dropped.eq(dropped + 1)

        with m.If(soft_reset):
            m.d.sync += [held_valid.eq(0), dropped.eq(0)]
        return {"read": read, "write": write}
