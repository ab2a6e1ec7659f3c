"""The load unit: LOAD instructions, external memory -> INP or WGT."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import Bank, Instruction, Opcode
from .instruction_control import InstructionControl, settled
from .memory_port import MemoryRequest
from .range_check import Extent, RangeCheck
from .status import ErrorCode
from .write_port import buffer_write_layout


__all__ = ["LoadUnit"]


class LoadUnit(wiring.Component):
    """Runs LOAD instructions: one read burst per row, words written as they arrive.

    Requests run ahead of the data (the memory may have many bursts in flight);
    the instruction is done when its last word is written. An instruction whose
    bank is not INP or WGT raises BAD_FIELD, one whose on-chip or external extent
    does not fit raises ADDRESS; either is skipped (its tokens are still pushed, so
    the other units never wait for it).

    Parameters
    ----------
    word_bits : int
    depths : dict
        ``{Bank.INP: words, Bank.WGT: words}``.
    dram_words : int
        Size of external memory in words.
    range_check_stage : bool
        The range check's product gets a stage of its own (:class:`.range_check.RangeCheck`,
        ``product_stage``): a cycle more per instruction.
    range_check_multiplier : str
        The range check's registered multipliers (``multiplier``), with ``range_check_stage``.
    """

    def __init__(self, *, word_bits, depths, dram_words, range_check_stage=False,
                 range_check_multiplier="behavioral"):
        self._range_check_stage = bool(range_check_stage)
        self._range_check_multiplier = range_check_multiplier
        self._depths = depths
        self._dram_words = dram_words
        super().__init__({
            "insn": In(stream.Signature(Instruction)),
            "next_available": In(1),
            "next_take": Out(1),
            "push_next": Out(1),
            "rd_req": Out(stream.Signature(MemoryRequest)),
            "rd_data": In(stream.Signature(word_bits)),
            "write": Out(stream.Signature(buffer_write_layout(word_bits))),
            "error": Out(1),
            "error_code": Out(4),
            "busy": Out(1),
            "waiting": Out(1),
            "empty": Out(1),
            "wait_memory": Out(1),
            "word": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.control = control = InstructionControl()
        wiring.connect(m, wiring.flipped(self.insn), control.insn)
        m.d.comb += [
            control.prev_available.eq(1),
            control.next_available.eq(self.next_available),
            self.next_take.eq(control.next_take),
            self.push_next.eq(control.push_next),
            self.busy.eq(control.busy),
            self.waiting.eq(control.waiting),
            self.empty.eq(control.empty),
        ]
        t = control.current.transfer
        opcode = control.current.header.opcode

        bank_ok = (t.bank == Bank.INP) | (t.bank == Bank.WGT)
        limit = Signal(17)
        m.d.comb += limit.eq(self._depths[Bank.WGT])
        with m.If(t.bank == Bank.INP):
            m.d.comb += limit.eq(self._depths[Bank.INP])
        m.submodules.check = check = RangeCheck(2, product_stage=self._range_check_stage,
                                                multiplier=self._range_check_multiplier)
        check.connect_extents([
            Extent(t.sram_base, t.rows, t.sram_stride, t.cols, limit),
            Extent(t.dram_base, t.rows, t.dram_stride, t.cols, self._dram_words),
        ])
        m.d.comb += check.start.eq(control.start)

        req_row = Signal(16)
        req_addr = Signal(32)
        recv_row = Signal(16)
        recv_col = Signal(16)
        row_addr = Signal(16)
        m.d.comb += [
            self.rd_req.payload.addr.eq(req_addr),
            self.rd_req.payload.len.eq(t.cols),
            self.write.payload.bank.eq(t.bank),
            self.write.payload.addr.eq(row_addr + recv_col),
            self.write.payload.data.eq(self.rd_data.payload),
        ]
        # The loop bounds, settled (no subtraction behind the instruction register).
        cols_last = settled(m, t.cols - 1, "cols_last")
        rows_last = settled(m, t.rows - 1, "rows_last")
        req_active = Signal()   # burst requests still to issue (``req_row != rows``)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(control.start):
                    m.d.sync += [req_row.eq(0), req_addr.eq(t.dram_base), recv_row.eq(0),
                                 recv_col.eq(0), row_addr.eq(t.sram_base)]
                    with m.If(opcode != Opcode.LOAD):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(check.done):
                    with m.If(~bank_ok | check.bad):
                        m.d.comb += [self.error.eq(1),
                                     self.error_code.eq(Mux(bank_ok, ErrorCode.ADDRESS,
                                                                 ErrorCode.BAD_FIELD))]
                        m.next = "DONE"
                    with m.Elif((t.rows == 0) | (t.cols == 0)):
                        m.next = "DONE"
                    with m.Else():
                        m.d.sync += req_active.eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.rd_req.valid.eq(req_active)
                with m.If(self.rd_req.valid & self.rd_req.ready):
                    m.d.sync += [req_row.eq(req_row + 1), req_addr.eq(req_addr + t.dram_stride)]
                    with m.If(req_row == rows_last):
                        m.d.sync += req_active.eq(0)
                m.d.comb += [
                    self.write.valid.eq(self.rd_data.valid),
                    self.rd_data.ready.eq(self.write.ready),
                    self.wait_memory.eq(~self.rd_data.valid),
                ]
                with m.If(self.rd_data.valid & self.write.ready):
                    m.d.comb += self.word.eq(1)
                    with m.If(recv_col == cols_last):
                        m.d.sync += [recv_col.eq(0), recv_row.eq(recv_row + 1),
                                     row_addr.eq(row_addr + t.sram_stride)]
                        with m.If(recv_row == rows_last):
                            m.next = "DONE"
                    with m.Else():
                        m.d.sync += recv_col.eq(recv_col + 1)
            with m.State("DONE"):
                m.d.comb += control.done.eq(1)
                m.next = "IDLE"
        return m

