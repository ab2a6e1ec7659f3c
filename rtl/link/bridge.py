"""Host bridge: request frames from a byte stream to memory, register and instruction ports.

The protocol (frames, opcodes, status codes, the order in which a frame is
judged) is specified in ``docs/link.md`` and defined executably by
:class:`sim.golden.link_frame.ReferenceDevice`, which this unit matches byte for
byte and access for access.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .crc16 import CRC16_INIT, crc16_update


__all__ = ["REQUEST_SYNC", "RESPONSE_SYNC", "DEFAULT_INSN_BYTES", "Opcode", "Status",
           "DEFAULT_MAX_PAYLOAD", "mem_write_layout", "RegWrite", "device_members",
           "check_parameters", "HostBridge"]


REQUEST_SYNC = 0xA5
RESPONSE_SYNC = 0x5A
#: Bytes of one instruction word (128 bits) unless a bridge is built otherwise.
DEFAULT_INSN_BYTES = 16
DEFAULT_MAX_PAYLOAD = 1024 + 8


class Opcode:
    """Request opcodes (the same values as :class:`sim.golden.link_frame.Opcode`)."""
    PING = 0x01
    WRITE_MEM = 0x02
    READ_MEM = 0x03
    PUSH_INSN = 0x04
    READ_REG = 0x05
    WRITE_REG = 0x06


class Status:
    """Response status codes (the same values as :class:`sim.golden.link_frame.Status`)."""
    OK = 0
    BAD_CRC = 1
    BAD_OPCODE = 2
    BAD_LENGTH = 3
    TIMEOUT = 4
    BAD_ADDRESS = 5


def mem_write_layout(word_bytes):
    """The payload of one memory word write: ``address`` (32, in words), ``data``."""
    return data.StructLayout({"address": 32, "data": 8 * word_bytes})


class RegWrite(data.Struct):
    """One register write.

    Members
    -------
    address : unsigned(16)
        Register index.
    data : unsigned(32)
        The value.
    """
    address: 16
    data: 32


def device_members(word_bytes, insn_bytes=DEFAULT_INSN_BYTES):
    """The device-side ports of a host bridge, as signature members (also used by the
    UART top, which forwards them)."""
    return {
        "mem_write": Out(stream.Signature(mem_write_layout(word_bytes))),
        "mem_read_address": Out(stream.Signature(32)),
        "mem_read_data": In(stream.Signature(8 * word_bytes)),
        "insn": Out(stream.Signature(8 * insn_bytes)),
        "reg_read_address": Out(stream.Signature(16)),
        "reg_read_data": In(stream.Signature(32)),
        "reg_write": Out(stream.Signature(RegWrite)),
        "frames_ok": Out(16),
        "frames_bad": Out(16),
    }


def _check_int(what, value, low, high):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], not {value!r}")


def check_parameters(*, word_bytes, memory_words, register_count, max_payload, timeout_cycles,
                     insn_bytes=DEFAULT_INSN_BYTES):
    """Raise :class:`ValueError` unless these are valid :class:`HostBridge` parameters."""
    for what, value in (("Word size in bytes", word_bytes),
                        ("Instruction size in bytes", insn_bytes)):
        _check_int(what, value, 1, 128)
        if value & (value - 1):
            raise ValueError(f"{what} must be a power of two, not {value}")
    _check_int("Memory size in words", memory_words, 1, 1 << 32)
    _check_int("Register count", register_count, 1, 1 << 16)
    smallest = max(4 + word_bytes, insn_bytes)
    _check_int("Maximum payload", max_payload, smallest, 0xFFFF)
    _check_int("Timeout in cycles", timeout_cycles, 2, 1 << 32)


class HostBridge(wiring.Component):
    """Request frames in, one response frame out per request, accesses on the device ports.

    The bridge does one thing at a time: it receives a frame (``rx`` ready), judges
    it, executes it, sends the response (``rx`` not ready), then receives the next.
    On a UART the host therefore waits for each response before sending the next
    request (stop-and-wait; :class:`jalapeno.serial_transport.SerialTransport` does).

    Receiving. Bytes other than ``0xA5`` are discarded while hunting. After ``0xA5``,
    the opcode and length are registered, the payload is written into a
    ``max_payload``-byte buffer (bytes beyond it are counted and dropped), its first
    six bytes are also captured into a register (address, count, index, value),
    and the CRC is updated every byte. ``timeout_cycles`` consecutive cycles without
    a byte inside a frame end it with TIMEOUT.

    Judging (one cycle, after the last CRC byte; all but the CRC comparison is computed
    in two register stages while the CRC bytes arrive), first failure wins: BAD_CRC,
    BAD_OPCODE, BAD_LENGTH (a length impossible for the opcode, a payload over
    ``max_payload``, a READ_MEM count of 0 or whose response exceeds
    ``max_payload``), BAD_ADDRESS (an access beyond ``memory_words``, an index at or
    beyond ``register_count``). A frame is executed only if all four pass, so a
    corrupted frame never causes an access; an error response has no payload.

    Executing.

    - WRITE_MEM / PUSH_INSN: each word is assembled from the buffer in
      ``word_bytes`` (``insn_bytes``) cycles, then offered on ``mem_write`` (``insn``)
      until taken; all writes complete before the response.
    - WRITE_REG: one ``reg_write`` transfer, then the response.
    - READ_REG: one ``reg_read_address`` transfer, then the value from
      ``reg_read_data`` (any latency), then the response.
    - READ_MEM: the response header goes out while the first address is issued;
      each word read from ``mem_read_data`` (any latency, in order) is sent while the
      next address is issued, so at most one read is outstanding.
    - PING: the response payload is read back from the buffer, a byte every two cycles
      at most (each byte leaves the buffer's block RAM through a register).

    Byte order: byte ``i`` of a word in a payload is bits ``[8i + 7 : 8i]`` of the
    word (little-endian), for memory words, instructions and register values.

    Every output stream's ``valid`` comes from a register or the state, and every
    ``ready`` of this unit depends only on its state, not on the other side's ``valid``.
    ``rx`` takes at most one byte per cycle; ``tx`` sends at most one byte per cycle.
    Latency :attr:`latency` (3) cycles from the transfer of a request's last byte to
    ``tx.valid`` for a response that needs no device access (PING, errors).

    Parameters
    ----------
    word_bytes : int
        Bytes of one memory word, a power of two (default 16: 128-bit words).
    memory_words : int
        Size of the memory behind ``mem_*`` in words (1 .. 2**32).
    register_count : int
        Registers behind ``reg_*`` (1 .. 2**16).
    max_payload : int
        The longest payload of a request or response, and the size of the receive
        buffer (default 1032: 1024 data bytes and a WRITE_MEM address).
    timeout_cycles : int
        Cycles without a byte that end a frame with TIMEOUT.
    insn_bytes : int
        Bytes of one instruction word, a power of two (default 16: 128 bits, as in
        ``docs/link.md``; 32 carries the core's 256-bit instructions whole).

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host.
    tx : Out(stream.Signature(8))
        Bytes to the host.
    mem_write : Out(stream.Signature(StructLayout({"address": 32, "data": 8 * word_bytes})))
        One word write per transfer; ``address`` counts words.
    mem_read_address : Out(stream.Signature(32))
        Word addresses to read.
    mem_read_data : In(stream.Signature(8 * word_bytes))
        One word per address transfer, in order.
    insn : Out(stream.Signature(8 * insn_bytes))
        Instruction words.
    reg_read_address : Out(stream.Signature(16))
        Register indices to read.
    reg_read_data : In(stream.Signature(32))
        One value per index transfer.
    reg_write : Out(stream.Signature(RegWrite))
        Register writes.
    frames_ok, frames_bad : Out(16)
        Frames answered OK and with an error status (wrapping counters).
    """

    latency = 3

    def __init__(self, word_bytes=16, memory_words=4096, register_count=16,
                 max_payload=DEFAULT_MAX_PAYLOAD, timeout_cycles=1_000_000,
                 insn_bytes=DEFAULT_INSN_BYTES):
        check_parameters(word_bytes=word_bytes, memory_words=memory_words,
                         register_count=register_count, max_payload=max_payload,
                         timeout_cycles=timeout_cycles, insn_bytes=insn_bytes)
        self._insn_bytes = insn_bytes
        self._word_bytes = word_bytes
        self._memory_words = memory_words
        self._register_count = register_count
        self._max_payload = max_payload
        self._timeout_cycles = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            **device_members(word_bytes, insn_bytes),
        })

    word_bytes = property(lambda self: self._word_bytes)
    insn_bytes = property(lambda self: self._insn_bytes)
    memory_words = property(lambda self: self._memory_words)
    register_count = property(lambda self: self._register_count)
    max_payload = property(lambda self: self._max_payload)
    timeout_cycles = property(lambda self: self._timeout_cycles)

    def elaborate(self, platform):
        m = Module()
        wb = self._word_bytes
        wb_log2 = exact_log2(wb)
        max_payload = self._max_payload
        insn_bytes = self._insn_bytes
        insn_log2 = exact_log2(insn_bytes)

        rx, tx = self.rx, self.tx
        rx_take = rx.valid & rx.ready
        byte = rx.payload

        # --- the receive buffer, written in order, read back in order ---------------------
        m.submodules.buffer = buffer = Memory(shape=8, depth=max_payload, init=[])
        write = buffer.write_port()
        read = buffer.read_port()
        rd_index = Signal(range(max_payload + 1))
        rd_index_next = Signal.like(rd_index)  # what rd_index becomes; the port reads it
        m.d.comb += [
            rd_index_next.eq(rd_index),
            read.addr.eq(rd_index_next),
            read.en.eq(1),
        ]
        m.d.sync += rd_index.eq(rd_index_next)
        rd_byte = read.data  # == buffer[rd_index]
        # The same byte a cycle later, for the transmit register (a PING payload): the block
        # RAM's clock-to-output (5.8 ns on the ECP5) then does not run on through the
        # transmit multiplexer (the ULX3S core's path at 90 MHz, 11.7 ns). It is
        # buffer[rd_index] when ``rd_index`` did not move in the cycle before.
        rd_byte_late = Signal(8)
        rd_byte_late_ok = Signal()
        m.d.sync += [rd_byte_late.eq(read.data), rd_byte_late_ok.eq(rd_index_next == rd_index)]

        # --- request fields ---------------------------------------------------------------
        opcode = Signal(8)
        length = Signal(16)
        received = Signal(16)                 # payload bytes received so far
        head = Signal(48)                     # the first six payload bytes
        crc_rx = Signal(16, init=CRC16_INIT)  # over opcode, length, payload
        crc_low = Signal(8)                   # the low byte of the frame's CRC field
        # Where the next payload byte goes, kept in registers so that no comparison of the
        # 16-bit ``received`` lies between a byte and the registers it is written to (that
        # was the ULX3S core's critical path at 83 MHz, 11.7 ns): ``head_slot`` is one-hot
        # over the six head bytes (zero past them), ``payload_last`` says the next byte is
        # the last, and ``before_last`` is length - 2 (the index that sets it).
        head_slot = Signal(6)
        payload_last = Signal()
        before_last = Signal(16)
        idle = Signal(range(self._timeout_cycles))

        address = head[0:32]                  # WRITE_MEM, READ_MEM; counts up as words go
        read_count = head[32:48]              # READ_MEM
        reg_index = head[0:16]                # READ_REG, WRITE_REG
        reg_value = head[16:48]               # WRITE_REG

        # --- execution and response state -------------------------------------------------
        status = Signal(8)
        resp_len = Signal(16)                 # payload bytes of the response still to send
        header_index = Signal(2)
        crc_tx = Signal(16, init=CRC16_INIT)
        shift_width = max(8 * wb, 8 * insn_bytes, 32)
        shift = Signal(shift_width)           # words assembled in at the top, sent from the bottom
        word_left = Signal(range(max(wb, insn_bytes) + 1))  # bytes to assemble or to send
        words_left = Signal(16)               # words left to write, push or read
        to_insn = Signal()                    # PUSH_INSN (else WRITE_MEM)

        # READ_MEM reads: one outstanding at a time, overlapping the previous word's bytes.
        rd_address_valid = Signal()
        rd_waiting = Signal()

        # --- judging, pipelined ---------------------------------------------------------------
        # Every field a verdict depends on except the CRC (opcode, length, head) is final once
        # the frame reaches CRC_LOW, and CRC_LOW and CRC_HIGH each last at least a cycle: so
        # two free-running register stages computed from those fields hold the frame's
        # verdict pieces by JUDGE, and JUDGE only combines four registered bits (the frame
        # length logic used to be the ULX3S core's critical path, from ``opcode`` through
        # the address adder and comparison into the verdict and ``words_left``).
        # Stage A: from the fields.
        write_words = Signal(16)              # WRITE_MEM: words in the payload
        span = Signal(16)                     # words a memory access touches
        known_a, length_ok_a = Signal(), Signal()
        memory_op, register_op, register_ok = Signal(), Signal(), Signal()
        low_bits_ok = (length[:wb_log2] == 4 % wb) if wb_log2 else Const(1)
        verdicts = {
            Opcode.PING: length <= max_payload,
            Opcode.WRITE_MEM: (length <= max_payload) & (length >= 4 + wb) & low_bits_ok,
            Opcode.READ_MEM: (length == 6) & (read_count != 0) & (read_count <= max_payload // wb),
            Opcode.PUSH_INSN: ((length <= max_payload) & (length != 0)
                               & ((length[:insn_log2] == 0) if insn_log2 else Const(1))),
            Opcode.READ_REG: length == 2,
            Opcode.WRITE_REG: length == 6,
        }
        known = Signal()
        length_ok = Signal()
        with m.Switch(opcode):
            for code, len_ok in verdicts.items():
                with m.Case(code):
                    m.d.comb += [known.eq(1), length_ok.eq(len_ok)]
        m.d.sync += [
            write_words.eq((length - 4) >> wb_log2),
            span.eq(Mux(opcode == Opcode.READ_MEM, read_count, (length - 4) >> wb_log2)),
            known_a.eq(known),
            length_ok_a.eq(length_ok),
            memory_op.eq((opcode == Opcode.WRITE_MEM) | (opcode == Opcode.READ_MEM)),
            register_op.eq((opcode == Opcode.READ_REG) | (opcode == Opcode.WRITE_REG)),
            register_ok.eq(reg_index < self._register_count),
        ]
        # Stage B: the address check (33 bits: no wrap-around).
        known_b, length_ok_b, address_ok_b = Signal(), Signal(), Signal()
        m.d.sync += [
            known_b.eq(known_a),
            length_ok_b.eq(length_ok_a),
            address_ok_b.eq(Mux(memory_op, address + span <= self._memory_words,
                                ~register_op | register_ok)),
        ]
        crc_ok = Signal()                     # registered in CRC_HIGH
        verdict = Signal(8)
        m.d.comb += verdict.eq(
            Mux(~crc_ok, Status.BAD_CRC,
                Mux(~known_b, Status.BAD_OPCODE,
                    Mux(~length_ok_b, Status.BAD_LENGTH,
                        Mux(~address_ok_b, Status.BAD_ADDRESS, Status.OK)))))

        # --- the transmit register ----------------------------------------------------------
        tx_free = ~tx.valid | tx.ready
        with m.If(tx.ready):
            m.d.sync += tx.valid.eq(0)

        # The response CRC takes each byte a cycle after it is sent, from the transmit
        # register: the byte's own path (a PING payload comes straight out of the buffer's
        # block RAM) then ends at that register, not in the CRC (the ULX3S core's critical
        # path, 13.5 ns, when the CRC took it at once). ``final_crc`` adds a byte still due,
        # so the CRC bytes follow the last payload byte in the next cycle as before.
        crc_due = Signal()
        m.d.sync += crc_due.eq(0)
        with m.If(crc_due):
            m.d.sync += crc_tx.eq(crc16_update(crc_tx, tx.payload))
        final_crc = Mux(crc_due, crc16_update(crc_tx, tx.payload), crc_tx)

        def send(value, *, update_crc=True):
            m.d.sync += [tx.valid.eq(1), tx.payload.eq(value)]
            if update_crc:
                m.d.sync += crc_due.eq(1)

        # --- READ_MEM read engine -------------------------------------------------------------
        m.d.comb += [
            self.mem_read_address.valid.eq(rd_address_valid),
            self.mem_read_address.payload.eq(address),
            self.mem_read_data.ready.eq(rd_waiting & (word_left == 0)),
        ]
        # words_left becomes non-zero for READ_MEM only when one executes (in JUDGE).
        reading = (opcode == Opcode.READ_MEM) & (words_left != 0)
        with m.If(~rd_address_valid & ~rd_waiting & reading):
            m.d.sync += rd_address_valid.eq(1)
        with m.If(rd_address_valid & self.mem_read_address.ready):
            m.d.sync += [
                rd_address_valid.eq(0),
                rd_waiting.eq(1),
                address.eq(address + 1),
                words_left.eq(words_left - 1),
            ]
        with m.If(self.mem_read_data.valid & self.mem_read_data.ready):
            m.d.sync += [
                rd_waiting.eq(0),
                shift[:8 * wb].eq(self.mem_read_data.payload),
                word_left.eq(wb),
            ]

        # --- device-side outputs --------------------------------------------------------------
        m.d.comb += [
            self.mem_write.payload.address.eq(address),
            self.mem_write.payload.data.eq(shift[shift_width - 8 * wb:]),
            self.insn.payload.eq(shift[shift_width - 8 * insn_bytes:]),
            self.reg_read_address.payload.eq(reg_index),
            self.reg_write.payload.address.eq(reg_index),
            self.reg_write.payload.data.eq(reg_value),
        ]

        def on_timeout():
            """Inside a receiving state: count an idle cycle, end the frame after too many."""
            with m.If(rx_take):
                m.d.sync += idle.eq(0)
            with m.Elif(idle == self._timeout_cycles - 1):
                m.d.sync += [
                    status.eq(Status.TIMEOUT),
                    resp_len.eq(0),
                    self.frames_bad.eq(self.frames_bad + 1),
                ]
                m.next = "RESP_HEADER"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        def take():
            """Inside a receiving state: the byte updates the CRC."""
            m.d.sync += crc_rx.eq(crc16_update(crc_rx, byte))

        with m.FSM(name="link"):
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(rx_take & (byte == REQUEST_SYNC)):
                    m.d.sync += [crc_rx.eq(CRC16_INIT), idle.eq(0)]
                    m.next = "OPCODE"

            with m.State("OPCODE"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                with m.If(rx_take):
                    take()
                    m.d.sync += opcode.eq(byte)
                    m.next = "LENGTH_LOW"

            with m.State("LENGTH_LOW"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                with m.If(rx_take):
                    take()
                    m.d.sync += length[:8].eq(byte)
                    m.next = "LENGTH_HIGH"

            with m.State("LENGTH_HIGH"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                with m.If(rx_take):
                    take()
                    m.d.sync += [length[8:].eq(byte), received.eq(0), head_slot.eq(1),
                                 payload_last.eq(Cat(length[:8], byte) == 1),
                                 before_last.eq(Cat(length[:8], byte) - 2)]
                    with m.If(Cat(length[:8], byte) == 0):
                        m.next = "CRC_LOW"
                    with m.Else():
                        m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                m.d.comb += [
                    write.addr.eq(received),
                    write.data.eq(byte),
                    write.en.eq(rx_take & (received < max_payload)),
                ]
                with m.If(rx_take):
                    take()
                    m.d.sync += [received.eq(received + 1), head_slot.eq(head_slot << 1),
                                 payload_last.eq(received == before_last)]
                    for i in range(6):
                        with m.If(head_slot[i]):
                            m.d.sync += head[8 * i:8 * i + 8].eq(byte)
                    with m.If(payload_last):
                        m.next = "CRC_LOW"

            with m.State("CRC_LOW"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                with m.If(rx_take):
                    m.d.sync += crc_low.eq(byte)
                    m.next = "CRC_HIGH"

            with m.State("CRC_HIGH"):
                m.d.comb += rx.ready.eq(1)
                on_timeout()
                with m.If(rx_take):
                    m.d.sync += crc_ok.eq(Cat(crc_low, byte) == crc_rx)
                    m.next = "JUDGE"

            with m.State("JUDGE"):
                m.d.sync += [status.eq(verdict), resp_len.eq(0)]
                with m.If(verdict != Status.OK):
                    m.d.sync += self.frames_bad.eq(self.frames_bad + 1)
                    m.next = "RESP_HEADER"
                with m.Else():
                    m.d.sync += self.frames_ok.eq(self.frames_ok + 1)
                    with m.Switch(opcode):
                        with m.Case(Opcode.PING):
                            m.d.comb += rd_index_next.eq(0)
                            m.d.sync += resp_len.eq(length)
                            m.next = "RESP_HEADER"
                        with m.Case(Opcode.WRITE_MEM):
                            m.d.comb += rd_index_next.eq(4)
                            m.d.sync += [
                                to_insn.eq(0),
                                words_left.eq(write_words),
                                word_left.eq(wb),
                            ]
                            m.next = "ASSEMBLE"
                        with m.Case(Opcode.PUSH_INSN):
                            m.d.comb += rd_index_next.eq(0)
                            m.d.sync += [
                                to_insn.eq(1),
                                words_left.eq(length >> insn_log2),
                                word_left.eq(insn_bytes),
                            ]
                            m.next = "ASSEMBLE"
                        with m.Case(Opcode.READ_MEM):
                            m.d.sync += [
                                resp_len.eq(read_count << wb_log2),
                                words_left.eq(read_count),
                            ]
                            m.next = "RESP_HEADER"
                        with m.Case(Opcode.READ_REG):
                            m.d.sync += resp_len.eq(4)
                            m.next = "REG_READ_ADDRESS"
                        with m.Case(Opcode.WRITE_REG):
                            m.next = "REG_WRITE"

            with m.State("ASSEMBLE"):
                m.d.comb += rd_index_next.eq(rd_index + 1)
                m.d.sync += [shift.eq(Cat(shift[8:], rd_byte)), word_left.eq(word_left - 1)]
                with m.If(word_left == 1):
                    m.next = "WRITE_WORD"

            with m.State("WRITE_WORD"):
                m.d.comb += [
                    self.mem_write.valid.eq(~to_insn),
                    self.insn.valid.eq(to_insn),
                ]
                taken = Mux(to_insn, self.insn.ready, self.mem_write.ready)
                with m.If(taken):
                    m.d.sync += [
                        words_left.eq(words_left - 1),
                        address.eq(address + 1),
                        word_left.eq(Mux(to_insn, insn_bytes, wb)),
                    ]
                    with m.If(words_left == 1):
                        m.d.sync += word_left.eq(0)
                        m.next = "RESP_HEADER"
                    with m.Else():
                        m.next = "ASSEMBLE"

            with m.State("REG_WRITE"):
                m.d.comb += self.reg_write.valid.eq(1)
                with m.If(self.reg_write.ready):
                    m.next = "RESP_HEADER"

            with m.State("REG_READ_ADDRESS"):
                m.d.comb += self.reg_read_address.valid.eq(1)
                with m.If(self.reg_read_address.ready):
                    m.next = "REG_READ_DATA"

            with m.State("REG_READ_DATA"):
                m.d.comb += self.reg_read_data.ready.eq(1)
                with m.If(self.reg_read_data.valid):
                    m.d.sync += shift[:32].eq(self.reg_read_data.payload)
                    m.next = "RESP_HEADER"

            with m.State("RESP_HEADER"):
                with m.If(tx_free):
                    m.d.sync += header_index.eq(header_index + 1)
                    with m.Switch(header_index):
                        with m.Case(0):
                            send(RESPONSE_SYNC, update_crc=False)
                            m.d.sync += crc_tx.eq(CRC16_INIT)
                        with m.Case(1):
                            send(status)
                        with m.Case(2):
                            send(resp_len[:8])
                        with m.Case(3):
                            send(resp_len[8:])
                            with m.If(resp_len == 0):
                                m.next = "RESP_CRC_LOW"
                            with m.Else():
                                m.next = "RESP_PAYLOAD"

            with m.State("RESP_PAYLOAD"):
                from_buffer = opcode == Opcode.PING
                from_memory = opcode == Opcode.READ_MEM
                ready = Mux(from_buffer, rd_byte_late_ok, ~from_memory | (word_left != 0))
                with m.If(tx_free & ready):
                    send(Mux(from_buffer, rd_byte_late, shift[:8]))
                    m.d.sync += resp_len.eq(resp_len - 1)
                    with m.If(from_buffer):
                        m.d.comb += rd_index_next.eq(rd_index + 1)
                    with m.Else():
                        m.d.sync += shift.eq(Cat(shift[8:], rd_byte))
                        with m.If(from_memory):
                            m.d.sync += word_left.eq(word_left - 1)
                    with m.If(resp_len == 1):
                        m.next = "RESP_CRC_LOW"

            with m.State("RESP_CRC_LOW"):
                with m.If(tx_free):
                    send(final_crc[:8], update_crc=False)
                    m.next = "RESP_CRC_HIGH"

            with m.State("RESP_CRC_HIGH"):
                with m.If(tx_free):
                    send(final_crc[8:], update_crc=False)
                    m.next = "HUNT"
        return m
