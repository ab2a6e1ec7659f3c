"""The store unit: STORE instructions, OUT (or the counter file) -> external memory."""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..isa import Bank, Instruction, Opcode
from .buffer_reader import BufferReader
from .instruction_control import InstructionControl, settled
from .memory_port import MemoryRequest
from .range_check import Extent, RangeCheck
from .status import ErrorCode


__all__ = ["StoreUnit"]


class StoreUnit(wiring.Component):
    """Runs STORE instructions: one write burst per row; done when every burst is acknowledged.

    The source is the OUT buffer, or with ``bank = COUNTERS`` the counter file
    (word i holds counter i, zero-extended), which is how a program reads the
    hardware counters into memory. Any other bank raises BAD_FIELD, an extent that
    does not fit raises ADDRESS; the instruction is then skipped (tokens still pushed).
    With ``range_check_stage`` the range check's product gets a stage of its own
    (:class:`.range_check.RangeCheck`, ``product_stage``; its registered multipliers are
    ``range_check_multiplier``): a cycle more per instruction.
    With ``read_stage`` the OUT buffer's read address and its word pass registers
    (:class:`.buffer_reader.BufferReader`, ``address_stage`` and ``data_stage``): two
    cycles more per instruction.
    """

    def __init__(self, *, word_bits, out_words, dram_words, counters, range_check_stage=False,
                 range_check_multiplier="behavioral", read_stage=False):
        self._range_check_stage = bool(range_check_stage)
        self._range_check_multiplier = range_check_multiplier
        self._read_stage = bool(read_stage)
        self._word_bits = word_bits
        self._out_words = out_words
        self._dram_words = dram_words
        self._counters = counters
        super().__init__({
            "insn": In(stream.Signature(Instruction)),
            "prev_available": In(1),
            "prev_take": Out(1),
            "push_prev": Out(1),
            "wr_req": Out(stream.Signature(MemoryRequest)),
            "wr_data": Out(stream.Signature(word_bits)),
            "wr_ack": In(stream.Signature(1)),
            "out_addr": Out(16),
            "out_data": In(word_bits),
            "counters": In(data.ArrayLayout(32, counters)),
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
            control.next_available.eq(1),
            control.prev_available.eq(self.prev_available),
            self.prev_take.eq(control.prev_take),
            self.push_prev.eq(control.push_prev),
            self.busy.eq(control.busy),
            self.waiting.eq(control.waiting),
            self.empty.eq(control.empty),
        ]
        t = control.current.transfer
        opcode = control.current.header.opcode
        is_counters = t.bank == Bank.COUNTERS
        bank_ok = (t.bank == Bank.OUT) | is_counters

        m.submodules.check = check = RangeCheck(2, product_stage=self._range_check_stage,
                                                multiplier=self._range_check_multiplier)
        check.connect_extents([
            Extent(t.sram_base, t.rows, t.sram_stride, t.cols,
                   Mux(is_counters, self._counters, self._out_words)),
            Extent(t.dram_base, t.rows, t.dram_stride, t.cols, self._dram_words),
        ])
        m.d.comb += check.start.eq(control.start)

        m.submodules.reader = reader = BufferReader(addr_width=16, data_width=self._word_bits,
                                                    address_stage=self._read_stage,
                                                    data_stage=self._read_stage)
        counter_word = Signal(32)
        counters = Array(self.counters[i] for i in range(self._counters))
        with m.If(reader.port_en):
            m.d.sync += counter_word.eq(counters[reader.port_addr[:max(1, (self._counters - 1).bit_length())]])
        m.d.comb += [
            self.out_addr.eq(reader.port_addr),
            reader.port_data.eq(Mux(is_counters, counter_word, self.out_data)),
        ]

        rd_row = Signal(16)
        rd_col = Signal(16)
        row_addr = Signal(16)
        req_row = Signal(16)
        req_addr = Signal(32)
        acks = Signal(16)
        m.d.comb += [
            reader.addr.payload.addr.eq(row_addr + rd_col),
            self.wr_req.payload.addr.eq(req_addr),
            self.wr_req.payload.len.eq(t.cols),
            self.wr_data.payload.eq(reader.data.payload.data),
        ]
        # The loop bounds, settled (no subtraction behind the instruction register).
        cols_last = settled(m, t.cols - 1, "cols_last")
        rows_last = settled(m, t.rows - 1, "rows_last")
        # "addresses / burst requests still to issue" in registers (``rd_row != rows``
        # and ``req_row != rows`` as flags), so the handshakes wait for no comparator.
        rd_active = Signal()
        req_active = Signal()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(control.start):
                    m.d.sync += [rd_row.eq(0), rd_col.eq(0), row_addr.eq(t.sram_base),
                                 req_row.eq(0), req_addr.eq(t.dram_base), acks.eq(0)]
                    with m.If(opcode != Opcode.STORE):
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
                        m.d.sync += [rd_active.eq(1), req_active.eq(1)]
                        m.next = "RUN"
            with m.State("RUN"):
                # Read addresses, row by row.
                m.d.comb += reader.addr.valid.eq(rd_active)
                with m.If(reader.addr.valid & reader.addr.ready):
                    with m.If(rd_col == cols_last):
                        m.d.sync += [rd_col.eq(0), rd_row.eq(rd_row + 1),
                                     row_addr.eq(row_addr + t.sram_stride)]
                        with m.If(rd_row == rows_last):
                            m.d.sync += rd_active.eq(0)
                    with m.Else():
                        m.d.sync += rd_col.eq(rd_col + 1)
                # Burst requests.
                m.d.comb += self.wr_req.valid.eq(req_active)
                with m.If(self.wr_req.valid & self.wr_req.ready):
                    m.d.sync += [req_row.eq(req_row + 1), req_addr.eq(req_addr + t.dram_stride)]
                    with m.If(req_row == rows_last):
                        m.d.sync += req_active.eq(0)
                # Data.
                m.d.comb += [
                    self.wr_data.valid.eq(reader.data.valid),
                    reader.data.ready.eq(self.wr_data.ready),
                    self.word.eq(self.wr_data.valid & self.wr_data.ready),
                    self.wait_memory.eq((reader.data.valid & ~self.wr_data.ready)
                                        | (~rd_active & ~reader.data.valid)),
                ]
                # Acknowledgements.
                m.d.comb += self.wr_ack.ready.eq(1)
                with m.If(self.wr_ack.valid):
                    m.d.sync += acks.eq(acks + 1)
                    with m.If(acks == rows_last):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += control.done.eq(1)
                m.next = "IDLE"
        return m
