"""The host link's frame protocol: encoder, response parser and reference device.

Pure Python. This module defines the protocol that ``rtl/link/bridge.py``
implements (specified in ``docs/link.md``); :class:`ReferenceDevice` gives the
exact responses and side effects of any byte stream and is the scoreboard of the
bridge's tests. The serial transport (``jalapeno/serial_transport.py``) builds its
requests and parses its responses with the same functions.

Frames
------
- Request (host -> device): ``0xA5``, opcode (1 byte), length (u16 LE, payload
  bytes), payload, CRC-16 over opcode + length + payload (u16 LE).
- Response (device -> host): ``0x5A``, status (1 byte), length (u16 LE), payload,
  CRC-16 over status + length + payload (u16 LE).

The CRC is CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no
reflection, no final XOR (check value of ``b"123456789"``: 0x29B1).

Rules of the device (the hardware follows them cycle for cycle)
----------------------------------------------------------------
1. Outside a frame, every byte other than ``0xA5`` is discarded.
2. After ``0xA5`` the device takes the 3 header bytes, then exactly ``length``
   payload bytes (only the first ``max_payload`` are stored; the rest are counted
   and discarded) and the 2 CRC bytes. A ``0xA5`` inside a frame is data.
3. A complete frame is judged, in this order: the CRC (BAD_CRC), the opcode
   (BAD_OPCODE), the length (BAD_LENGTH), the address or register index
   (BAD_ADDRESS); only a frame that passes all four is executed (status OK).
4. A gap of ``timeout_cycles`` cycles without a byte inside a frame ends it with
   TIMEOUT, and the device hunts for ``0xA5`` again.
5. Every frame that began with ``0xA5`` gets exactly one response; an error
   response has an empty payload and nothing else happens.
"""

import enum
import struct
from dataclasses import dataclass, field


__all__ = [
    "REQUEST_SYNC", "RESPONSE_SYNC", "INSN_BYTES", "DEFAULT_WORD_BYTES", "DEFAULT_MAX_PAYLOAD",
    "HEADER_BYTES", "CRC_BYTES", "Opcode", "Status", "crc16", "encode_request",
    "encode_response", "ping", "write_mem", "read_mem", "push_insn", "read_reg", "write_reg",
    "Response", "FrameError", "BadSyncError", "BadCrcError", "TruncatedFrameError",
    "ResponseParser", "parse_responses", "max_write_words", "max_read_words",
    "max_insn_words", "ReferenceDevice",
]


REQUEST_SYNC = 0xA5
RESPONSE_SYNC = 0x5A
#: Bytes of one instruction word (128 bits) unless a device is built otherwise.
INSN_BYTES = 16
DEFAULT_WORD_BYTES = 16
#: 1024 bytes of data plus room for a WRITE_MEM address (and slack).
DEFAULT_MAX_PAYLOAD = 1024 + 8
#: Sync, opcode or status, and the two length bytes.
HEADER_BYTES = 4
CRC_BYTES = 2

CRC_POLY = 0x1021
CRC_INIT = 0xFFFF


class Opcode(enum.IntEnum):
    """Request opcodes. Any other value is answered with :attr:`Status.BAD_OPCODE`."""
    PING = 0x01        #: payload: anything (up to max_payload); response: the same bytes
    WRITE_MEM = 0x02   #: payload: u32 word address, N >= 1 words; response: empty
    READ_MEM = 0x03    #: payload: u32 word address, u16 count >= 1; response: the words
    PUSH_INSN = 0x04   #: payload: N >= 1 128-bit instruction words; response: empty
    READ_REG = 0x05    #: payload: u16 index; response: u32 value
    WRITE_REG = 0x06   #: payload: u16 index, u32 value; response: empty


class Status(enum.IntEnum):
    """Response status codes."""
    OK = 0
    BAD_CRC = 1
    BAD_OPCODE = 2
    BAD_LENGTH = 3
    TIMEOUT = 4
    BAD_ADDRESS = 5


# --- CRC and encoding ---------------------------------------------------------------------------

def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data, crc=CRC_INIT):
    """CRC-16/CCITT-FALSE of ``data`` (bytes), continuing from ``crc``.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def _frame(sync, code, payload):
    payload = bytes(payload)
    if not 0 <= code <= 0xFF:
        raise ValueError(f"Opcode or status must fit one byte, not {code!r}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"A payload has at most 65535 bytes, not {len(payload)}")
    body = bytes([code]) + struct.pack("<H", len(payload)) + payload
    return bytes([sync]) + body + struct.pack("<H", crc16(body))


def encode_request(opcode, payload=b""):
    """A request frame: ``0xA5``, opcode, length, payload, CRC (see module docstring)."""
    return _frame(REQUEST_SYNC, int(opcode), payload)


def encode_response(status, payload=b""):
    """A response frame: ``0x5A``, status, length, payload, CRC."""
    return _frame(RESPONSE_SYNC, int(status), payload)


def _check_range(what, value, bits):
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{what} must be an integer in [0, 2**{bits}), not {value!r}")


def ping(payload=b""):
    """A PING request; the device echoes ``payload``."""
    return encode_request(Opcode.PING, payload)


def write_mem(address, data):
    """A WRITE_MEM request: ``data`` (whole words) to word ``address`` onward."""
    _check_range("Word address", address, 32)
    return encode_request(Opcode.WRITE_MEM, struct.pack("<I", address) + bytes(data))


def read_mem(address, count):
    """A READ_MEM request for ``count`` words from word ``address`` onward."""
    _check_range("Word address", address, 32)
    _check_range("Word count", count, 16)
    return encode_request(Opcode.READ_MEM, struct.pack("<IH", address, count))


def push_insn(words):
    """A PUSH_INSN request: ``words`` is N instructions of 16 (``insn_bytes``) bytes each,
    little-endian."""
    return encode_request(Opcode.PUSH_INSN, bytes(words))


def read_reg(index):
    """A READ_REG request for register ``index``."""
    _check_range("Register index", index, 16)
    return encode_request(Opcode.READ_REG, struct.pack("<H", index))


def write_reg(index, value):
    """A WRITE_REG request: register ``index`` gets the u32 ``value``."""
    _check_range("Register index", index, 16)
    _check_range("Register value", value, 32)
    return encode_request(Opcode.WRITE_REG, struct.pack("<HI", index, value))


def max_write_words(word_bytes=DEFAULT_WORD_BYTES, max_payload=DEFAULT_MAX_PAYLOAD):
    """The most words one WRITE_MEM frame can carry."""
    return (max_payload - 4) // word_bytes


def max_read_words(word_bytes=DEFAULT_WORD_BYTES, max_payload=DEFAULT_MAX_PAYLOAD):
    """The most words one READ_MEM frame can ask for (its response fits max_payload)."""
    return max_payload // word_bytes


def max_insn_words(max_payload=DEFAULT_MAX_PAYLOAD, insn_bytes=INSN_BYTES):
    """The most instructions one PUSH_INSN frame can carry."""
    return max_payload // insn_bytes


# --- response parsing ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Response:
    """One decoded response frame."""
    status: int
    payload: bytes = b""

    @property
    def status_name(self):
        try:
            return Status(self.status).name
        except ValueError:
            return f"unknown status {self.status}"


class FrameError(Exception):
    """A response frame could not be decoded."""


class BadSyncError(FrameError):
    """A response did not begin with the sync byte 0x5A."""


class BadCrcError(FrameError):
    """A response's CRC did not match its contents."""


class TruncatedFrameError(FrameError):
    """The byte stream ended (or timed out) inside a response."""


class ResponseParser:
    """Decode response frames from a byte stream.

    Two ways to use it:

    - push: :meth:`feed` bytes as they arrive and :meth:`pop` complete responses
      (``None`` while the next one is incomplete);
    - pull: :meth:`read` one response through a ``read(n)`` function (such as
      ``serial.Serial.read``) that returns at most ``n`` bytes, fewer on a time-out.

    A response is strict: its first byte must be 0x5A (:class:`BadSyncError`
    otherwise; the device never sends anything between responses) and its CRC
    must match (:class:`BadCrcError`).
    """

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += bytes(data)

    @property
    def pending(self):
        """Bytes received and not yet part of a returned response."""
        return bytes(self._buffer)

    def bytes_needed(self):
        """How many more bytes the next response needs (at least 1 if none is buffered)."""
        buffer = self._buffer
        if len(buffer) < HEADER_BYTES:
            return HEADER_BYTES - len(buffer)
        length = buffer[2] | (buffer[3] << 8)
        return max(0, HEADER_BYTES + length + CRC_BYTES - len(buffer))

    def pop(self):
        """The next complete :class:`Response`, or ``None`` if it is still incomplete."""
        buffer = self._buffer
        if buffer and buffer[0] != RESPONSE_SYNC:
            bad = buffer[0]
            del buffer[0]
            raise BadSyncError(f"Response begins with {bad:#04x}, not the sync byte "
                               f"{RESPONSE_SYNC:#04x}")
        if self.bytes_needed():
            return None
        length = buffer[2] | (buffer[3] << 8)
        end = HEADER_BYTES + length
        frame = bytes(buffer[:end + CRC_BYTES])
        del buffer[:end + CRC_BYTES]
        expected = crc16(frame[1:end])
        got = frame[end] | (frame[end + 1] << 8)
        if got != expected:
            raise BadCrcError(f"Response CRC is {got:#06x}, its contents give {expected:#06x} "
                              f"(status {frame[1]}, {length} payload bytes)")
        return Response(frame[1], frame[HEADER_BYTES:end])

    def read(self, read):
        """Pull one response through ``read(n)``; :class:`TruncatedFrameError` if it stops short."""
        while True:
            needed = self.bytes_needed()
            if needed == 0:
                return self.pop()
            chunk = read(needed)
            if not chunk:
                raise TruncatedFrameError(
                    f"Response incomplete: {len(self._buffer)} bytes received, "
                    f"{needed} more expected" if self._buffer else "No response received")
            self.feed(chunk)
            if self._buffer[0] != RESPONSE_SYNC:
                self.pop()  # raises BadSyncError


def parse_responses(data):
    """Every response in ``data`` (complete frames only, else :class:`TruncatedFrameError`)."""
    parser = ResponseParser()
    parser.feed(data)
    responses = []
    while parser.pending:
        response = parser.pop()
        if response is None:
            raise TruncatedFrameError(f"{len(parser.pending)} bytes of an incomplete response")
        responses.append(response)
    return responses


# --- reference device ---------------------------------------------------------------------------

@dataclass
class _Frame:
    """A request being received."""
    opcode: int = 0
    length: int = 0
    header: bytearray = field(default_factory=bytearray)   # opcode and length bytes
    payload: bytearray = field(default_factory=bytearray)  # the stored part (<= max_payload)
    received: int = 0                                        # payload bytes received
    crc: int = CRC_INIT                                      # over opcode + length + payload
    crc_bytes: bytearray = field(default_factory=bytearray)


class ReferenceDevice:
    """What the bridge and the device behind it do with a byte stream: the scoreboard.

    Parameters
    ----------
    word_bytes : int
        Bytes of one memory word.
    memory_words : int
        Words of memory; an access beyond it is BAD_ADDRESS.
    register_count : int
        Registers; an index at or beyond it is BAD_ADDRESS.
    max_payload : int
        The most payload bytes a request or response may carry.
    insn_bytes : int
        Bytes of one instruction word.
    memory : list of int, optional
        Initial memory words (default zeros).
    registers : list of int, optional
        Initial register values (default zeros).

    Attributes
    ----------
    memory, registers : list of int
        The device's state; registers behave as plain storage.
    instructions : list of int
        Every instruction word pushed, in order.
    mem_writes, mem_reads, reg_writes, reg_reads : list
        Every access the bridge makes on its device-side ports, in order:
        ``(address, word)``, ``address``, ``(index, value)``, ``index``.
    responses : list of Response
        Every response sent.
    frames_ok, frames_bad : int
        Frames answered OK and with an error status.
    """

    def __init__(self, *, word_bytes=DEFAULT_WORD_BYTES, memory_words=1024, register_count=16,
                 max_payload=DEFAULT_MAX_PAYLOAD, insn_bytes=INSN_BYTES, memory=None,
                 registers=None):
        for what, value in (("Word size", word_bytes), ("Instruction size", insn_bytes)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{what} must be a power of two, not {value!r}")
        self.word_bytes = word_bytes
        self.insn_bytes = insn_bytes
        self.memory_words = memory_words
        self.register_count = register_count
        self.max_payload = max_payload
        self.memory = list(memory) if memory is not None else [0] * memory_words
        self.registers = list(registers) if registers is not None else [0] * register_count
        if len(self.memory) != memory_words or len(self.registers) != register_count:
            raise ValueError("Initial memory and registers must have memory_words and "
                             "register_count entries")
        self.instructions = []
        self.mem_writes = []
        self.mem_reads = []
        self.reg_writes = []
        self.reg_reads = []
        self.responses = []
        self.frames_ok = 0
        self.frames_bad = 0
        self._frame = None
        self._state = "hunt"

    @property
    def in_frame(self):
        """True between a frame's sync byte and its last CRC byte."""
        return self._frame is not None

    def feed(self, data):
        """Process ``data`` (bytes arriving without a time-out gap); return the response bytes."""
        out = bytearray()
        for byte in bytes(data):
            out += self._byte(byte)
        return bytes(out)

    def timeout(self):
        """A gap of ``timeout_cycles`` or more: a frame in progress ends with TIMEOUT."""
        if self._frame is None:
            return b""
        self._frame = None
        return self._respond(Status.TIMEOUT)

    def _byte(self, byte):
        frame = self._frame
        if frame is None:
            if byte == REQUEST_SYNC:
                self._frame = _Frame()
            return b""
        if len(frame.header) < 3:
            frame.header.append(byte)
            frame.crc = crc16([byte], frame.crc)
            if len(frame.header) == 3:
                frame.opcode = frame.header[0]
                frame.length = frame.header[1] | (frame.header[2] << 8)
            return b""
        if frame.received < frame.length:
            if frame.received < self.max_payload:
                frame.payload.append(byte)
            frame.received += 1
            frame.crc = crc16([byte], frame.crc)
            return b""
        frame.crc_bytes.append(byte)
        if len(frame.crc_bytes) < 2:
            return b""
        self._frame = None
        return self._judge(frame)

    def _judge(self, frame):
        received_crc = frame.crc_bytes[0] | (frame.crc_bytes[1] << 8)
        if received_crc != frame.crc:
            return self._respond(Status.BAD_CRC)
        try:
            opcode = Opcode(frame.opcode)
        except ValueError:
            return self._respond(Status.BAD_OPCODE)
        length, payload, wb = frame.length, bytes(frame.payload), self.word_bytes
        if opcode == Opcode.PING:
            if length > self.max_payload:
                return self._respond(Status.BAD_LENGTH)
            return self._respond(Status.OK, payload)
        if opcode == Opcode.WRITE_MEM:
            if length > self.max_payload or length < 4 + wb or (length - 4) % wb:
                return self._respond(Status.BAD_LENGTH)
            address = int.from_bytes(payload[:4], "little")
            words = (length - 4) // wb
            if address + words > self.memory_words:
                return self._respond(Status.BAD_ADDRESS)
            for k in range(words):
                word = int.from_bytes(payload[4 + k * wb:4 + (k + 1) * wb], "little")
                self.memory[address + k] = word
                self.mem_writes.append((address + k, word))
            return self._respond(Status.OK)
        if opcode == Opcode.READ_MEM:
            if length != 6:
                return self._respond(Status.BAD_LENGTH)
            address, count = struct.unpack("<IH", payload)
            if count == 0 or count * wb > self.max_payload:
                return self._respond(Status.BAD_LENGTH)
            if address + count > self.memory_words:
                return self._respond(Status.BAD_ADDRESS)
            data = bytearray()
            for k in range(count):
                self.mem_reads.append(address + k)
                data += self.memory[address + k].to_bytes(wb, "little")
            return self._respond(Status.OK, data)
        if opcode == Opcode.PUSH_INSN:
            size = self.insn_bytes
            if length > self.max_payload or length == 0 or length % size:
                return self._respond(Status.BAD_LENGTH)
            for k in range(length // size):
                self.instructions.append(
                    int.from_bytes(payload[k * size:(k + 1) * size], "little"))
            return self._respond(Status.OK)
        if opcode == Opcode.READ_REG:
            if length != 2:
                return self._respond(Status.BAD_LENGTH)
            (index,) = struct.unpack("<H", payload)
            if index >= self.register_count:
                return self._respond(Status.BAD_ADDRESS)
            self.reg_reads.append(index)
            return self._respond(Status.OK, struct.pack("<I", self.registers[index]))
        assert opcode == Opcode.WRITE_REG
        if length != 6:
            return self._respond(Status.BAD_LENGTH)
        index, value = struct.unpack("<HI", payload)
        if index >= self.register_count:
            return self._respond(Status.BAD_ADDRESS)
        self.registers[index] = value
        self.reg_writes.append((index, value))
        return self._respond(Status.OK)

    def _respond(self, status, payload=b""):
        if status == Status.OK:
            self.frames_ok += 1
        else:
            self.frames_bad += 1
        self.responses.append(Response(int(status), bytes(payload)))
        return encode_response(status, payload)
