"""The core behind the UART host link, with its external memory on chip: a board's payload."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..link.uart_bridge import UartHostBridge
from .compute_unit import shared_pe_modules
from .core import Core
from .local_memory import LocalMemory


__all__ = ["LinkedCore", "CONTROL_REGISTER"]

#: Writing 1 to bit 0 of this register soft-resets the core (over the link).
CONTROL_REGISTER = 63


class LinkedCore(wiring.Component):
    """:class:`Core` + :class:`LocalMemory` + :class:`rtl.link.uart_bridge.UartHostBridge`.

    The host's link frames map onto the core: WRITE_MEM / READ_MEM reach the on-chip
    memory the core's memory port uses, PUSH_INSN (32-byte instructions) feeds the
    core's instruction port, READ_REG / WRITE_REG its registers, and a write of 1 to
    :data:`CONTROL_REGISTER` is a soft reset. ``jalapeno.serial_transport.CoreSerialTransport``
    is the host side. The scheduler's ports are not on the link yet (tied off).

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
                                 args.get("shared_pe_module", False))

    def _make_core(self):
        return Core(**self._core_args)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._make_core()
        lanes = core.lanes
        m.submodules.memory = memory = LocalMemory(words=self._memory_words, word_bits=8 * lanes)
        m.submodules.link = link = UartHostBridge(
            self._divisor, word_bytes=lanes, memory_words=self._memory_words, register_count=64,
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
        m.d.comb += [core.insn.payload.eq(link.insn.payload), core.insn.valid.eq(link.insn.valid),
                     link.insn.ready.eq(core.insn.ready)]
        # Registers: a read answers the cycle after its address; writes go to the core,
        # except the control register.
        answer = Signal()
        value = Signal(32)
        m.d.comb += [link.reg_read_address.ready.eq(~answer), link.reg_write.ready.eq(~answer),
                     link.reg_read_data.valid.eq(answer), link.reg_read_data.payload.eq(value)]
        with m.If(link.reg_read_data.ready & answer):
            m.d.sync += answer.eq(0)
        with m.If(link.reg_read_address.valid & ~answer):
            m.d.comb += core.reg_addr.eq(link.reg_read_address.payload)
            m.d.sync += [answer.eq(1), value.eq(core.reg_data)]
        with m.Elif(link.reg_write.valid & ~answer):
            address = link.reg_write.payload.address
            with m.If(address == CONTROL_REGISTER):
                m.d.comb += core.soft_reset.eq(link.reg_write.payload.data[0])
            with m.Else():
                m.d.comb += [core.reg_addr.eq(address), core.reg_wdata.eq(link.reg_write.payload.data),
                             core.reg_we.eq(1)]
        m.d.comb += [core.req.valid.eq(0), core.done.valid.eq(0), core.resp.ready.eq(1),
                     core.batch.ready.eq(1)]
        return m
