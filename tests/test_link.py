"""Host link: CRC and frame golden model, UART in Amaranth's simulator, the host bridge in
Amaranth's simulator and on Verilator (fuzzed against the reference device), the bridge
behind a UART at the pin level, and the serial transport over a pty.

The fuzz stimulus (:func:`fuzz_chunks`) is shared with the cocotb benches
``tests/benches/tb_link_bridge.py`` and ``tests/benches/tb_link_uart.py``.
"""

import binascii
import io
import json
import os
import random
import select
import struct
import threading
import time
import tty
from collections import Counter
from dataclasses import dataclass, field

import pytest
from amaranth.hdl import Module, Signal, Value
from amaranth.sim import Simulator

from jalapeno.serial_transport import LinkError, SerialTransport
from rtl.link.bridge import HostBridge
from rtl.link.crc16 import crc16_update
from rtl.link.uart import UartRx, UartTx
from rtl.link.uart_bridge import UartHostBridge
from sim.cocotb_runner import run_cocotb
from sim.golden import link_frame as lf
from sim.golden.link_frame import Opcode, Status
from sim.pysim import send_stream


# --- fuzz stimulus ------------------------------------------------------------------------------

#: Categories whose frame must have no effect (and get an error response, if any).
CORRUPTED = frozenset({"bad_address", "bad_length", "oversize", "bad_opcode", "bad_crc",
                       "bit_flip", "truncated", "framing_error", "garbage_only"})


@dataclass
class Chunk:
    """Bytes sent without a time-out gap; afterwards the device is idle (or timed out).

    ``category`` names what the chunk tests; ``frames`` is how many request frames
    it was built from; ``drop`` (pin level only) is the index of a byte sent with a
    bad stop bit, which the UART drops.
    """
    category: str
    data: bytes
    frames: int = 1
    garbage: bool = False
    drop: int = -1

    @property
    def corrupted(self):
        return self.category in CORRUPTED

    @property
    def delivered(self):
        """What reaches the bridge (the dropped byte removed)."""
        if self.drop < 0:
            return self.data
        return self.data[:self.drop] + self.data[self.drop + 1:]


@dataclass(frozen=True)
class LinkConfig:
    word_bytes: int = 16
    memory_words: int = 40
    register_count: int = 10
    max_payload: int = 136
    timeout_cycles: int = 40
    insn_bytes: int = 16

    def bridge_args(self):
        return dict(word_bytes=self.word_bytes, memory_words=self.memory_words,
                    register_count=self.register_count, max_payload=self.max_payload,
                    timeout_cycles=self.timeout_cycles, insn_bytes=self.insn_bytes)

    def reference(self, memory, registers):
        return lf.ReferenceDevice(word_bytes=self.word_bytes, memory_words=self.memory_words,
                                  register_count=self.register_count,
                                  max_payload=self.max_payload, insn_bytes=self.insn_bytes,
                                  memory=memory, registers=registers)

    def initial_state(self, rng):
        memory = [rng.getrandbits(8 * self.word_bytes) for _ in range(self.memory_words)]
        registers = [rng.getrandbits(32) for _ in range(self.register_count)]
        return memory, registers


def _count(rng, most, maximum):
    """Mostly 1..most, sometimes the maximum."""
    if rng.random() < 0.05:
        return maximum
    return rng.randint(1, min(most, maximum))


def _address(rng, words, memory_words):
    """An in-range start address for ``words`` words, often at the top boundary."""
    top = memory_words - words
    return top if rng.random() < 0.25 else rng.randint(0, top)


def valid_frame(rng, cfg, opcode):
    """A request that the device executes (status OK)."""
    wb, mp = cfg.word_bytes, cfg.max_payload
    if opcode == Opcode.PING:
        n = mp if rng.random() < 0.03 else rng.randint(0, min(24, mp))
        return lf.ping(rng.randbytes(n))
    if opcode == Opcode.WRITE_MEM:
        n = _count(rng, 3, min(lf.max_write_words(wb, mp), cfg.memory_words))
        return lf.write_mem(_address(rng, n, cfg.memory_words), rng.randbytes(n * wb))
    if opcode == Opcode.READ_MEM:
        n = _count(rng, 3, min(lf.max_read_words(wb, mp), cfg.memory_words))
        return lf.read_mem(_address(rng, n, cfg.memory_words), n)
    if opcode == Opcode.PUSH_INSN:
        n = _count(rng, 2, lf.max_insn_words(mp, cfg.insn_bytes))
        return lf.push_insn(rng.randbytes(n * cfg.insn_bytes))
    if opcode == Opcode.READ_REG:
        return lf.read_reg(rng.randrange(cfg.register_count))
    assert opcode == Opcode.WRITE_REG
    return lf.write_reg(rng.randrange(cfg.register_count), rng.getrandbits(32))


def bad_address_frame(rng, cfg):
    wb, mw = cfg.word_bytes, cfg.memory_words
    kind = rng.choice(["write", "read", "read_reg", "write_reg"])
    high = rng.choice([0xFFFFFFFF, 0xFFFFFFFF - rng.randrange(4), rng.getrandbits(32)])
    if kind in ("write", "read"):
        n = rng.randint(1, min(3, mw))
        address = rng.choice([mw - n + 1, mw - n + rng.randint(1, 4), mw, high])
        address = min(address, 0xFFFFFFFF)
        if kind == "write":
            return lf.write_mem(address, rng.randbytes(n * wb))
        return lf.read_mem(address, n)
    index = rng.choice([cfg.register_count, cfg.register_count + rng.randrange(8), 0xFFFF,
                        rng.randrange(cfg.register_count, 0x10000)])
    if kind == "read_reg":
        return lf.read_reg(index)
    return lf.write_reg(index, rng.getrandbits(32))


def bad_length_frame(rng, cfg):
    """A length impossible for the opcode (but at most max_payload), valid CRC."""
    wb, mp = cfg.word_bytes, cfg.max_payload
    kind = rng.choice(["write_short", "write_ragged", "read_len", "read_zero", "read_big",
                       "insn_empty", "insn_ragged", "reg_len", "write_reg_len"])
    if kind == "write_short":
        return lf.encode_request(Opcode.WRITE_MEM, rng.randbytes(rng.randrange(4 + wb)))
    if kind == "write_ragged" and wb > 1:
        n = min(rng.randint(1, 3) * wb + rng.randint(1, wb - 1), mp - 4)
        return lf.encode_request(Opcode.WRITE_MEM, rng.randbytes(4 + n))
    if kind == "write_ragged":  # every length >= 5 is whole words of one byte
        return lf.encode_request(Opcode.WRITE_MEM, rng.randbytes(rng.randrange(5)))
    if kind == "read_len":
        return lf.encode_request(Opcode.READ_MEM, rng.randbytes(rng.choice([0, 1, 4, 5, 7, 12])))
    if kind == "read_zero":
        return lf.read_mem(rng.randrange(cfg.memory_words), 0)
    if kind == "read_big":
        return lf.read_mem(0, rng.choice([mp // wb + 1, 0xFFFF, rng.randint(mp // wb + 1, 0xFFFF)]))
    if kind == "insn_empty":
        return lf.encode_request(Opcode.PUSH_INSN, b"")
    if kind == "insn_ragged":
        size = cfg.insn_bytes
        n = min(rng.randint(0, 2) * size + rng.randint(1, size - 1), mp - 1)
        return lf.encode_request(Opcode.PUSH_INSN, rng.randbytes(n))
    if kind == "reg_len":
        return lf.encode_request(Opcode.READ_REG, rng.randbytes(rng.choice([0, 1, 3, 6])))
    return lf.encode_request(Opcode.WRITE_REG, rng.randbytes(rng.choice([0, 2, 4, 5, 7, 8])))


def oversize_frame(rng, cfg):
    """A payload longer than max_payload, sent in full, valid CRC."""
    opcode = rng.choice([Opcode.PING, Opcode.WRITE_MEM, Opcode.PUSH_INSN])
    n = cfg.max_payload + rng.choice([1, rng.randint(2, 40)])
    if opcode == Opcode.PUSH_INSN:
        n = -(-n // cfg.insn_bytes) * cfg.insn_bytes
    payload = bytearray(rng.randbytes(n))
    if opcode == Opcode.WRITE_MEM:
        payload[:4] = struct.pack("<I", 0)
    return lf.encode_request(opcode, payload)


def bad_opcode_frame(rng, cfg):
    opcode = rng.choice([0x00, 0x07, 0xFF, rng.randint(0x07, 0xFF), 0x80 | rng.randint(1, 6)])
    return lf.encode_request(opcode, rng.randbytes(rng.randint(0, 12)))


def any_valid_frame(rng, cfg):
    return valid_frame(rng, cfg, rng.choice(list(Opcode)))


def garbage(rng, n):
    """``n`` bytes, none of them the request sync byte."""
    return bytes(rng.choice([b for b in range(256) if b != lf.REQUEST_SYNC]) for _ in range(n))


#: Category weights of :func:`fuzz_chunks`.
WEIGHTS = {
    "ping": 7, "write_mem": 8, "read_mem": 8, "push_insn": 7, "read_reg": 6, "write_reg": 6,
    "pair": 4, "bad_address": 7, "bad_length": 7, "oversize": 1.5, "bad_opcode": 4,
    "bad_crc": 6, "bit_flip": 8, "truncated": 6, "garbage_only": 1.5,
}


def fuzz_chunks(rng, cfg, frames, *, pin_level=False):
    """Chunks holding at least ``frames`` request frames of every category in :data:`WEIGHTS`.

    At the pin level there are no back-to-back pairs (the host waits for each response),
    and ``framing_error`` chunks send one byte of a valid frame with a low stop bit.
    """
    weights = dict(WEIGHTS)
    if pin_level:
        del weights["pair"]
        weights["framing_error"] = 3
    names, values = list(weights), list(weights.values())
    opcodes = {op.name.lower(): op for op in Opcode}
    chunks = []
    total = 0
    while total < frames:
        category = rng.choices(names, values)[0]
        count = 1
        drop = -1
        if category in opcodes:
            data = valid_frame(rng, cfg, opcodes[category])
        elif category == "pair":
            data = any_valid_frame(rng, cfg) + any_valid_frame(rng, cfg)
            count = 2
        elif category == "bad_address":
            data = bad_address_frame(rng, cfg)
        elif category == "bad_length":
            data = bad_length_frame(rng, cfg)
        elif category == "oversize":
            data = oversize_frame(rng, cfg)
        elif category == "bad_opcode":
            data = bad_opcode_frame(rng, cfg)
        elif category == "bad_crc":
            frame = bytearray(any_valid_frame(rng, cfg))
            frame[-2 + rng.randrange(2)] ^= rng.randint(1, 255)
            data = bytes(frame)
        elif category == "bit_flip":
            frame = bytearray(any_valid_frame(rng, cfg))
            for bit in rng.sample(range(8 * len(frame)), rng.randint(1, 3)):
                frame[bit // 8] ^= 1 << (bit % 8)
            data = bytes(frame)
        elif category == "truncated":
            frame = any_valid_frame(rng, cfg)
            data = frame[:rng.randint(1, len(frame) - 1)]
        elif category == "framing_error":
            data = any_valid_frame(rng, cfg)
            drop = rng.randrange(len(data))
        else:
            assert category == "garbage_only"
            data = garbage(rng, rng.randint(1, 12))
            count = 0
        prefix = rng.random() < 0.12 and category != "garbage_only"
        if prefix:
            extra = garbage(rng, rng.randint(1, 8))
            data = extra + data
            drop = drop + len(extra) if drop >= 0 else -1
        chunks.append(Chunk(category, data, count, prefix, drop))
        total += count
    return chunks


def chunk_statistics(chunks):
    """Frames per category (chunks for garbage), and totals, for the test reports."""
    stats = Counter()
    for chunk in chunks:
        if chunk.category == "garbage_only":
            stats["garbage_only (chunks)"] += 1
        else:
            stats[chunk.category] += chunk.frames
    stats["with garbage prefix (chunks)"] = sum(c.garbage for c in chunks)
    stats["total frames"] = sum(c.frames for c in chunks)
    stats["total bytes"] = sum(len(c.data) for c in chunks)
    return dict(stats)


def fuzz_plan(cfg, seed, frames, *, pin_level=False):
    """The benches' stimulus for ``seed``: ``(memory, registers, chunks)`` (they draw
    the initial state first, then the chunks, from one ``random.Random(seed)``)."""
    rng = random.Random(seed)
    memory, registers = cfg.initial_state(rng)
    return memory, registers, fuzz_chunks(rng, cfg, frames, pin_level=pin_level)


def fuzz_report(cfg, seed, frames, *, pin_level=False):
    """Frames per category and responses per status of a bench's run (from the reference)."""
    memory, registers, chunks = fuzz_plan(cfg, seed, frames, pin_level=pin_level)
    reference = cfg.reference(memory, registers)
    for chunk in chunks:
        expected_for_chunk(reference, chunk)
    statuses = Counter(Status(r.status).name for r in reference.responses)
    return chunk_statistics(chunks), dict(statuses)


def expected_for_chunk(reference, chunk):
    """Feed a chunk to the reference; returns ``(response bytes, timed_out)``."""
    expected = reference.feed(chunk.delivered)
    timed_out = reference.in_frame
    if timed_out:
        expected += reference.timeout()
    return expected, timed_out


# --- golden model -------------------------------------------------------------------------------

def test_crc16_check_value():
    assert lf.crc16(b"123456789") == 0x29B1
    assert lf.crc16(b"") == 0xFFFF


def test_crc16_matches_binascii():
    """binascii.crc_hqx is CRC-16/CCITT with a chosen initial value: an independent reference."""
    rng = random.Random(3)
    for n in list(range(20)) + [255, 256, 1032, 4000]:
        data = rng.randbytes(n)
        assert lf.crc16(data) == binascii.crc_hqx(data, 0xFFFF)
        cut = rng.randint(0, n)
        assert lf.crc16(data[cut:], lf.crc16(data[:cut])) == lf.crc16(data)


def test_encode_request_layout():
    frame = lf.encode_request(Opcode.WRITE_REG, bytes.fromhex("0300efbeadde"))
    body = bytes.fromhex("06 0600 0300efbeadde")
    assert frame == b"\xa5" + body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "little")
    assert frame == lf.write_reg(3, 0xDEADBEEF)
    assert lf.read_mem(0x01020304, 5) == lf.encode_request(Opcode.READ_MEM,
                                                           bytes.fromhex("040302010500"))
    assert lf.read_reg(0x1234)[1:6] == bytes.fromhex("05 0200 3412")
    response = lf.encode_response(Status.BAD_LENGTH)
    assert response == b"\x5a\x03\x00\x00" + binascii.crc_hqx(b"\x03\x00\x00", 0xFFFF).to_bytes(
        2, "little")


@pytest.mark.parametrize("call", [
    lambda: lf.write_mem(1 << 32, b""), lambda: lf.write_mem(-1, b""),
    lambda: lf.read_mem(0, 1 << 16), lambda: lf.read_reg(1 << 16),
    lambda: lf.write_reg(0, 1 << 32), lambda: lf.encode_request(256),
    lambda: lf.ping(bytes(1 << 16)),
])
def test_request_builders_check_ranges(call):
    with pytest.raises(ValueError):
        call()


def test_response_parser_round_trip():
    rng = random.Random(5)
    responses = [lf.Response(rng.randrange(6), rng.randbytes(rng.choice([0, 1, 4, 300])))
                 for _ in range(200)]
    stream = b"".join(lf.encode_response(r.status, r.payload) for r in responses)
    assert lf.parse_responses(stream) == responses
    # Push mode, in random pieces.
    parser, got, position = lf.ResponseParser(), [], 0
    while position < len(stream):
        step = rng.randint(1, 40)
        parser.feed(stream[position:position + step])
        position += step
        while (response := parser.pop()) is not None:
            got.append(response)
    assert got == responses and parser.pending == b""
    # Pull mode, through a read(n) that returns short reads.
    source = io.BytesIO(stream)
    parser = lf.ResponseParser()
    assert [parser.read(lambda n: source.read(rng.randint(1, n))) for _ in responses] == responses


def test_response_parser_errors():
    good = lf.encode_response(Status.OK, b"abc")
    with pytest.raises(lf.BadSyncError, match="0xa5"):
        lf.parse_responses(b"\xa5" + good[1:])
    bad = bytearray(good)
    bad[5] ^= 0x10
    with pytest.raises(lf.BadCrcError, match="CRC"):
        lf.parse_responses(bytes(bad))
    with pytest.raises(lf.TruncatedFrameError):
        lf.parse_responses(good[:-1])
    source = io.BytesIO(good[:6])
    with pytest.raises(lf.TruncatedFrameError, match="incomplete"):
        lf.ResponseParser().read(source.read)
    with pytest.raises(lf.TruncatedFrameError, match="No response"):
        lf.ResponseParser().read(io.BytesIO(b"").read)
    assert lf.Response(4).status_name == "TIMEOUT"
    assert "unknown" in lf.Response(9).status_name


def _device(**kwargs):
    args = dict(word_bytes=4, memory_words=8, register_count=4, max_payload=32,
                memory=[0x11111111 * k for k in range(8)], registers=[10, 20, 30, 40])
    args.update(kwargs)
    return lf.ReferenceDevice(**args)


def _statuses(device, data):
    return [(r.status, r.payload) for r in lf.parse_responses(device.feed(data))]


def test_reference_device_opcodes():
    dev = _device()
    assert _statuses(dev, lf.ping(b"\xa5hello")) == [(Status.OK, b"\xa5hello")]
    assert _statuses(dev, lf.write_mem(6, bytes(range(8)))) == [(Status.OK, b"")]
    assert dev.memory[6:] == [0x03020100, 0x07060504]
    assert dev.mem_writes == [(6, 0x03020100), (7, 0x07060504)]
    assert _statuses(dev, lf.read_mem(5, 3)) == [(Status.OK, (0x55555555).to_bytes(4, "little")
                                                  + bytes(range(8)))]
    assert dev.mem_reads == [5, 6, 7]
    words = bytes(range(32))
    assert _statuses(dev, lf.push_insn(words)) == [(Status.OK, b"")]
    assert dev.instructions == [int.from_bytes(words[:16], "little"),
                                int.from_bytes(words[16:], "little")]
    assert _statuses(dev, lf.write_reg(3, 0xCAFEF00D)) == [(Status.OK, b"")]
    assert _statuses(dev, lf.read_reg(3)) == [(Status.OK, struct.pack("<I", 0xCAFEF00D))]
    assert dev.reg_writes == [(3, 0xCAFEF00D)] and dev.reg_reads == [3]
    assert (dev.frames_ok, dev.frames_bad) == (6, 0)


def test_reference_device_errors_and_precedence():
    dev = _device()
    bad_crc = bytearray(lf.write_mem(0, bytes(4)))
    bad_crc[-1] ^= 1
    cases = [
        (bytes(bad_crc), Status.BAD_CRC),
        (lf.encode_request(0x07, b""), Status.BAD_OPCODE),
        (lf.encode_request(0x00, bytes(100)), Status.BAD_OPCODE),  # opcode before length
        (lf.encode_request(Opcode.WRITE_MEM, bytes(7)), Status.BAD_LENGTH),   # no whole word
        (lf.encode_request(Opcode.WRITE_MEM, bytes(10)), Status.BAD_LENGTH),  # ragged
        (lf.write_mem(1 << 31, bytes(32)), Status.BAD_LENGTH),  # 36 > 32: length before address
        (lf.read_mem(0, 0), Status.BAD_LENGTH),
        (lf.read_mem(0, 9), Status.BAD_LENGTH),  # a 36-byte response > 32
        (lf.encode_request(Opcode.READ_MEM, bytes(5)), Status.BAD_LENGTH),
        (lf.encode_request(Opcode.PUSH_INSN, b""), Status.BAD_LENGTH),
        (lf.encode_request(Opcode.PUSH_INSN, bytes(17)), Status.BAD_LENGTH),
        (lf.ping(bytes(33)), Status.BAD_LENGTH),
        (lf.encode_request(Opcode.READ_REG, bytes(3)), Status.BAD_LENGTH),
        (lf.encode_request(Opcode.WRITE_REG, bytes(5)), Status.BAD_LENGTH),
        (lf.write_mem(7, bytes(8)), Status.BAD_ADDRESS),      # 7 + 2 > 8
        (lf.write_mem(0xFFFFFFFF, bytes(4)), Status.BAD_ADDRESS),  # no wrap-around
        (lf.read_mem(6, 3), Status.BAD_ADDRESS),
        (lf.read_reg(4), Status.BAD_ADDRESS),
        (lf.write_reg(0xFFFF, 1), Status.BAD_ADDRESS),
    ]
    for frame, status in cases:
        assert _statuses(dev, frame) == [(status, b"")], (frame.hex(), status)
    assert not (dev.mem_writes or dev.mem_reads or dev.instructions or dev.reg_writes
                or dev.reg_reads)
    assert dev.frames_bad == len(cases)
    # At the edge, accepted.
    assert _statuses(dev, lf.write_mem(6, bytes(8))) == [(Status.OK, b"")]
    assert _statuses(dev, lf.read_mem(2, 6))[0][0] == Status.OK


def test_reference_device_resync_and_timeout():
    dev = _device()
    # Garbage (no 0xA5) is dropped; a frame after it is answered.
    assert _statuses(dev, b"\x00\x5a\xff" + lf.read_reg(1)) == [(Status.OK, struct.pack("<I", 20))]
    # A truncated frame waits; a time-out ends it; the next frame is answered.
    frame = lf.write_reg(1, 5)
    assert dev.feed(frame[:-1]) == b"" and dev.in_frame
    assert lf.parse_responses(dev.timeout()) == [lf.Response(Status.TIMEOUT)]
    assert dev.timeout() == b"" and not dev.in_frame
    assert _statuses(dev, frame) == [(Status.OK, b"")]
    # An oversized payload is received in full (not stored), then rejected.
    assert _statuses(dev, lf.ping(bytes(100)) + lf.read_reg(1)) == [
        (Status.BAD_LENGTH, b""), (Status.OK, struct.pack("<I", 5))]


# --- CRC in hardware ----------------------------------------------------------------------------

def test_crc16_update_rtl():
    """Every basis vector (the update is linear over GF(2)) and random pairs, against the golden."""
    m = Module()
    crc, byte, out = Signal(16), Signal(8), Signal(16)
    m.d.comb += out.eq(crc16_update(crc, byte))
    rng = random.Random(7)
    vectors = [(1 << i, 0) for i in range(16)] + [(0, 1 << i) for i in range(8)]
    vectors += [(0, 0), (0xFFFF, 0xFF)] + [(rng.getrandbits(16), rng.getrandbits(8))
                                             for _ in range(300)]
    mismatches = []

    async def bench(ctx):
        for c, b in vectors:
            ctx.set(crc, c)
            ctx.set(byte, b)
            if ctx.get(out) != lf.crc16(bytes([b]), c):
                mismatches.append((c, b, ctx.get(out)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches
    with pytest.raises(ValueError, match="16-bit CRC"):
        crc16_update(Signal(15), byte)


# --- UART in Amaranth's simulator ---------------------------------------------------------------

def _run(fragment, *benches, background=()):
    sim = Simulator(fragment)
    sim.add_clock(1e-8)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("divisor", [4, 5, 7, 16])
def test_uart_loopback(divisor):
    """UartTx into UartRx: every byte arrives, in order, at one byte per 10 bit times."""
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01] + [rng.getrandbits(8) for _ in range(14)]
    got = []
    cycles = []

    async def source(ctx):
        await send_stream(ctx, tx.i, data[:10])              # back to back
        await send_stream(ctx, tx.i, data[10:], stall=0.9, rng=rng)  # with idle gaps

    async def sink(ctx):
        ctx.set(rx.o.ready, 1)
        count = 0
        while len(got) < len(data):
            _, _, valid, payload = await ctx.tick().sample(rx.o.valid, rx.o.payload)
            count += 1
            if valid:
                got.append(payload)
                cycles.append(count)
            assert count < 40 * divisor * len(data), f"only {len(got)} bytes"
        assert ctx.get(rx.framing_errors) == 0 and ctx.get(rx.overruns) == 0

    _run(m, sink, background=[source])
    assert got == data
    # Back to back: exactly 10 bit times apart.
    assert [b - a for a, b in zip(cycles, cycles[1:10])] == [10 * divisor] * 9


@pytest.mark.parametrize("divisor", [4, 9])
def test_uart_tx_waveform(divisor):
    """Start bit, 8 data bits LSB first, stop bit, ``divisor`` cycles each; idle high."""
    data = [0x3C, 0xA5]
    dut = UartTx(divisor)
    record = []

    async def driver(ctx):
        await send_stream(ctx, dut.i, data)

    async def recorder(ctx):
        async for _, _, valid, ready in ctx.tick().sample(dut.i.valid, dut.i.ready):
            if valid and ready:
                break
        for _ in range(21 * divisor):
            record.append(ctx.get(dut.tx))
            await ctx.tick()

    _run(dut, recorder, background=[driver])
    expected = []
    for byte in data:
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
            expected += [bit] * divisor
    assert record == expected + [1] * divisor


def _drive_line(ctx_pin, segments):
    """``segments``: (level, cycles) pairs; returns an async testbench driving the pin."""
    async def bench(ctx):
        ctx.set(ctx_pin, 1)
        await ctx.tick().repeat(3)
        for level, count in segments:
            ctx.set(ctx_pin, level)
            if count:
                await ctx.tick().repeat(count)
        ctx.set(ctx_pin, 1)
    return bench


def _character(byte, divisor, *, stop=1, period=None):
    """(level, cycles) segments of one 8N1 character at bit period ``period`` (default divisor),
    with bit edges rounded to whole cycles."""
    period = divisor if period is None else period
    bits = [0] + [(byte >> k) & 1 for k in range(8)] + [stop]
    edges = [round(k * period) for k in range(11)]
    return [(bit, edges[k + 1] - edges[k]) for k, bit in enumerate(bits)]


def _receive(divisor, segments, *, cycles, ready=True):
    dut = UartRx(divisor)
    got = []
    counters = {}

    async def sink(ctx):
        ctx.set(dut.o.ready, ready)
        for _ in range(cycles):
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                got.append(payload)
        counters.update(framing_errors=ctx.get(dut.framing_errors),
                        overruns=ctx.get(dut.overruns), held=ctx.get(dut.o.valid),
                        payload=ctx.get(dut.o.payload))

    _run(dut, sink, background=[_drive_line(dut.rx, segments)])
    return got, counters


def test_uart_rx_framing_error():
    """A low stop bit drops the byte and counts; the receiver waits for the line to go high."""
    d = 6
    segments = (_character(0x55, d, stop=0) + [(1, d)] + _character(0xA3, d)
                + [(0, 30 * d), (1, 2 * d)]  # a break: one framing error, no bytes
                + _character(0x7E, d))
    got, counters = _receive(d, segments, cycles=sum(n for _, n in segments) + 40)
    assert got == [0xA3, 0x7E]
    assert counters["framing_errors"] == 2 and counters["overruns"] == 0


def test_uart_rx_ignores_glitches():
    d = 8
    segments = [(0, 1), (1, 3 * d), (0, d // 2 - 1), (1, 2 * d)] + _character(0x42, d)
    got, counters = _receive(d, segments, cycles=sum(n for _, n in segments) + 40)
    assert got == [0x42] and counters["framing_errors"] == 0


@pytest.mark.parametrize("divisor,error", [(16, 0.045), (16, -0.045), (8, 0.035), (8, -0.045),
                                           (4, 0.025), (4, -0.045)])
def test_uart_rx_baud_tolerance(divisor, error):
    """A sender a few percent slow (positive error) or fast, for a run of back-to-back
    characters. The margins are those of the mid-bit sample point; a sample point one
    cycle off fails one of them."""
    rng = random.Random(divisor)
    data = [rng.getrandbits(8) for _ in range(12)] + [0x00, 0xFF]
    period = divisor * (1 + error)
    # Back to back: one continuous bit clock at the sender's rate.
    bits = []
    for byte in data:
        bits += [0] + [(byte >> k) & 1 for k in range(8)] + [1]
    edges = [round(k * period) for k in range(len(bits) + 1)]
    segments = [(bit, edges[k + 1] - edges[k]) for k, bit in enumerate(bits)]
    got, counters = _receive(divisor, segments, cycles=edges[-1] + 20 * divisor)
    assert got == data and counters["framing_errors"] == 0


def test_uart_rx_overrun():
    """With ``o`` not taken, the first byte is held and the second one dropped and counted."""
    d = 4
    segments = _character(0x12, d) + _character(0x34, d)
    got, counters = _receive(d, segments, cycles=sum(n for _, n in segments) + 20, ready=False)
    assert counters["held"] == 1 and counters["payload"] == 0x12 and counters["overruns"] == 1


# --- host bridge in Amaranth's simulator (other word sizes) ------------------------------------

@dataclass
class DeviceLog:
    """The state of the device behind the bridge and every access to it."""
    memory: list
    registers: list
    instructions: list = field(default_factory=list)
    mem_writes: list = field(default_factory=list)
    mem_reads: list = field(default_factory=list)
    reg_writes: list = field(default_factory=list)
    reg_reads: list = field(default_factory=list)

    def effects(self):
        return (len(self.instructions) + len(self.mem_writes) + len(self.mem_reads)
                + len(self.reg_writes) + len(self.reg_reads))


def run_bridge_pysim(cfg, chunks, *, seed):
    """Every chunk through HostBridge in Amaranth's simulator with a device model; returns
    ``(reference, device)`` after checking every response byte chunk by chunk."""
    rng = random.Random(seed)
    memory, registers = cfg.initial_state(rng)
    reference = cfg.reference(memory, registers)
    dut = HostBridge(**cfg.bridge_args())
    device = DeviceLog(list(memory), list(registers))
    mask = (1 << 32) - 1

    async def bench(ctx):
        outs = [dut.mem_write, dut.mem_read_address, dut.insn, dut.reg_read_address,
                dut.reg_write]
        mem_queue, reg_queue = [], []
        offered = {"rx": None, "mem": None, "reg": None}
        cycle = 0
        for index, chunk in enumerate(chunks):
            expected, _ = expected_for_chunk(reference, chunk)
            data, position, got, spent = chunk.data, 0, bytearray(), 0
            before = device.effects()
            while position < len(data) or len(got) < len(expected):
                cycle += 1
                spent += 1
                assert spent < 100 + 20 * (len(data) + len(expected)) + 2 * cfg.timeout_cycles
                # Drive.
                if offered["rx"] is None and position < len(data) and rng.random() > 0.2:
                    offered["rx"] = data[position]
                ctx.set(dut.rx.valid, offered["rx"] is not None)
                ctx.set(dut.rx.payload, offered["rx"] or 0)
                ctx.set(dut.tx.ready, rng.random() > 0.25)
                readies = [rng.random() > 0.3 for _ in outs]
                for port, ready in zip(outs, readies):
                    ctx.set(port.ready, ready)
                for key, port, queue in (("mem", dut.mem_read_data, mem_queue),
                                         ("reg", dut.reg_read_data, reg_queue)):
                    if offered[key] is None and queue and queue[0][0] <= cycle \
                            and rng.random() > 0.3:
                        offered[key] = queue.pop(0)[1]
                    ctx.set(port.valid, offered[key] is not None)
                    ctx.set(port.payload, offered[key] or 0)
                # Sample (settled) and record the transfers of the coming edge.
                if offered["rx"] is not None and ctx.get(dut.rx.ready):
                    offered["rx"] = None
                    position += 1
                if ctx.get(dut.tx.ready) and ctx.get(dut.tx.valid):
                    got.append(ctx.get(dut.tx.payload))
                    assert got == expected[:len(got)], (index, chunk, expected.hex(), got.hex())
                for key, port in (("mem", dut.mem_read_data), ("reg", dut.reg_read_data)):
                    if offered[key] is not None and ctx.get(port.ready):
                        offered[key] = None
                values = {}
                for port, ready in zip(outs, readies):
                    if ready and ctx.get(port.valid):
                        values[id(port)] = ctx.get(Value.cast(port.payload))
                if id(dut.mem_write) in values:
                    word = values[id(dut.mem_write)]
                    device.memory[word & mask] = word >> 32
                    device.mem_writes.append((word & mask, word >> 32))
                if id(dut.mem_read_address) in values:
                    address = values[id(dut.mem_read_address)]
                    device.mem_reads.append(address)
                    mem_queue.append((cycle + 1 + rng.randint(0, 3), device.memory[address]))
                if id(dut.insn) in values:
                    device.instructions.append(values[id(dut.insn)])
                if id(dut.reg_read_address) in values:
                    index_ = values[id(dut.reg_read_address)]
                    device.reg_reads.append(index_)
                    reg_queue.append((cycle + 1 + rng.randint(0, 3), device.registers[index_]))
                if id(dut.reg_write) in values:
                    word = values[id(dut.reg_write)]
                    device.registers[word & 0xFFFF] = word >> 16
                    device.reg_writes.append((word & 0xFFFF, word >> 16))
                await ctx.tick()
            ctx.set(dut.rx.valid, 0)
            assert not chunk.corrupted or device.effects() == before, (index, chunk)
        assert ctx.get(dut.frames_ok) == reference.frames_ok & 0xFFFF
        assert ctx.get(dut.frames_bad) == reference.frames_bad & 0xFFFF

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return reference, device


def test_bridge_timeout_boundary_pysim():
    """A gap of timeout_cycles - 1 idle cycles inside a frame is fine; timeout_cycles is not."""
    timeout = 10
    dut = HostBridge(word_bytes=4, memory_words=8, register_count=2, max_payload=16,
                     timeout_cycles=timeout)
    frame = lf.ping(b"\xa5")
    # (bytes, idle cycles before each byte)
    plan = [(frame, timeout - 1), (frame[:3], 0), (b"", timeout), (frame, 0),
            (b"\x01\x02" + frame[:2], 0), (b"", timeout - 1), (frame[2:], 0)]
    got = bytearray()

    async def bench(ctx):
        ctx.set(dut.tx.ready, 1)
        for data, gap in plan:
            for byte in data or [None]:
                for _ in range(gap):
                    ctx.set(dut.rx.valid, 0)
                    _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
                    if valid:
                        got.append(payload)
                if byte is None:
                    continue
                ctx.set(dut.rx.valid, 1)
                ctx.set(dut.rx.payload, byte)
                while True:
                    ready = ctx.get(dut.rx.ready)
                    _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
                    if valid:
                        got.append(payload)
                    if ready:
                        break
        ctx.set(dut.rx.valid, 0)
        for _ in range(3 * timeout):
            _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid:
                got.append(payload)

    _run(dut, bench)
    echo = lf.Response(Status.OK, b"\xa5")
    assert lf.parse_responses(bytes(got)) == [echo, lf.Response(Status.TIMEOUT), echo, echo]


@pytest.mark.parametrize("frame", [lf.ping(b""), lf.ping(b"xyz"), lf.read_reg(9)])
def test_bridge_latency_pysim(frame):
    """``latency`` cycles from the last request byte to the first response byte; the rest of
    the response follows at one byte per cycle, but a PING payload byte after the first
    waits a cycle more (each leaves the buffer through a register)."""
    dut = HostBridge(word_bytes=4, memory_words=8, register_count=2, max_payload=16)
    seen = []

    async def bench(ctx):
        ctx.set(dut.tx.ready, 1)
        ctx.set(dut.rx.valid, 1)
        for cycle in range(3 * len(frame) + 12):
            if cycle < len(frame):
                ctx.set(dut.rx.payload, frame[cycle])
                assert ctx.get(dut.rx.ready)
            else:
                ctx.set(dut.rx.valid, 0)
            _, _, valid, payload = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
            if valid:
                seen.append((cycle, payload))

    _run(dut, bench)
    last = len(frame) - 1
    payload = len(frame) - 6 if frame[1] == lf.Opcode.PING else 0
    # cycles after the byte before: the header, the payload, the CRC
    steps = [0, 1, 1, 1] + ([1] + [2] * (payload - 1) if payload else []) + [1, 1]
    expected = [last + dut.latency + sum(steps[:i + 1]) for i in range(len(steps))]
    assert [c for c, _ in seen] == expected
    assert len(lf.parse_responses(bytes(p for _, p in seen))) == 1


@pytest.mark.parametrize("word_bytes,insn_bytes", [(1, 16), (4, 32)])
def test_bridge_pysim_word_sizes(word_bytes, insn_bytes):
    """The fuzz mix at other word and instruction sizes (fewer frames: Amaranth's simulator
    is slower)."""
    cfg = LinkConfig(word_bytes=word_bytes, memory_words=20, register_count=4,
                     max_payload=2 * insn_bytes + 4 * word_bytes, timeout_cycles=24,
                     insn_bytes=insn_bytes)
    seed = 100 + word_bytes
    chunks = fuzz_chunks(random.Random(seed), cfg, 120)
    reference, device = run_bridge_pysim(cfg, chunks, seed=seed)
    for what in ("mem_writes", "mem_reads", "instructions", "reg_writes", "reg_reads",
                 "memory", "registers"):
        assert getattr(device, what) == getattr(reference, what), what
    assert len(reference.mem_writes) and len(reference.mem_reads) and len(reference.instructions)
    print(f"seed {seed}: {chunk_statistics(chunks)}")


# --- host bridge on Verilator: stream-level fuzz ------------------------------------------------

FUZZ = LinkConfig()


def _env(cfg, **more):
    env = {"WORD_BYTES": cfg.word_bytes, "MEMORY_WORDS": cfg.memory_words,
           "REGISTER_COUNT": cfg.register_count, "MAX_PAYLOAD": cfg.max_payload,
           "TIMEOUT_CYCLES": cfg.timeout_cycles, "INSN_BYTES": cfg.insn_bytes}
    env.update(more)
    return env


def _print_report(cfg, seed, frames, *, pin_level=False):
    categories, statuses = fuzz_report(cfg, seed, frames, pin_level=pin_level)
    print(f"seed {seed}, {frames} frames\n  frames per category: {categories}\n"
          f"  responses per status: {statuses}")
    return categories, statuses


def test_fuzz_mix_reaches_everything():
    """The stimulus of the Verilator fuzz has every category and provokes every status."""
    categories, statuses = _print_report(FUZZ, 2024, 10_000)
    names = [name for name in WEIGHTS if name != "garbage_only"]
    for name in names + ["garbage_only (chunks)", "with garbage prefix (chunks)"]:
        assert categories[name] >= 100, name
    assert set(statuses) == {s.name for s in Status} and min(statuses.values()) >= 300


@pytest.mark.cocotb
def test_bridge_fuzz_verilator():
    """10,000 frames (LINK_FUZZ_FRAMES overrides) at the byte-stream level."""
    seed, frames = 2024, int(os.environ.get("LINK_FUZZ_FRAMES", "10000"))
    _print_report(FUZZ, seed, frames)
    run_cocotb(HostBridge(**FUZZ.bridge_args()), name="link_bridge_fuzz",
               test_module="tests.benches.tb_link_bridge", testcase="fuzz",
               extra_env=_env(FUZZ, SEED=seed, FRAMES=frames))


# --- the UART host bridge at the pin level ------------------------------------------------------

PIN_DIVISOR = 5
PINS = LinkConfig(word_bytes=16, memory_words=64, register_count=8, max_payload=264,
                  timeout_cycles=40 * PIN_DIVISOR)


@pytest.mark.cocotb
def test_uart_bridge_pins_verilator():
    """300 frames (LINK_PIN_FRAMES overrides) into the pins at divisor 5."""
    seed, frames = 77, int(os.environ.get("LINK_PIN_FRAMES", "300"))
    print(f"divisor {PIN_DIVISOR}")
    _print_report(PINS, seed, frames, pin_level=True)
    run_cocotb(UartHostBridge(PIN_DIVISOR, **PINS.bridge_args()), name="link_uart_bridge_pins",
               test_module="tests.benches.tb_link_uart", testcase="fuzz_pins",
               extra_env=_env(PINS, SEED=seed, FRAMES=frames, DIVISOR=PIN_DIVISOR))


# --- the serial transport -----------------------------------------------------------------------

class PtyBoard:
    """A board stand-in for transport tests: the reference device behind a pty, in a thread.

    A frame left unfinished for ``gap`` seconds times out, as on the bridge.
    """

    def __init__(self, *, gap=0.2, **device_args):
        self.device = lf.ReferenceDevice(**device_args)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.gap = gap
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], self.gap)
            if not ready:
                response = self.device.timeout()
            else:
                data = os.read(self.master, 4096)
                self.received += data
                response = self.device.feed(data)
            if response:
                os.write(self.master, response)

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def board():
    board = PtyBoard(word_bytes=16, memory_words=200, register_count=8, max_payload=1032,
                     memory=list(range(200)), registers=[0x1000 + i for i in range(8)])
    yield board
    board.close()


def test_serial_transport_operations(board):
    rng = random.Random(11)
    with SerialTransport(board.path, timeout=2.0) as link:
        assert link.ping(b"hello") == b"hello"
        assert link.ping(bytes(1032)) == bytes(1032)
        data = rng.randbytes(150 * 16)
        link.write_memory(20, data)  # 64 + 64 + 22 words
        assert link.read_memory(20, 150) == data  # 64 + 64 + 22 words
        assert link.read_memory(0, 2) == (0).to_bytes(16, "little") + (1).to_bytes(16, "little")
        insns = rng.randbytes(70 * 16)
        link.push_instructions(insns)  # 64 + 6
        assert link.read_register(7) == 0x1007
        link.write_register(7, 0xFEEDC0DE)
        assert link.read_register(7) == 0xFEEDC0DE
    device = board.device
    assert device.instructions == [int.from_bytes(insns[16 * k:16 * k + 16], "little")
                                   for k in range(70)]
    frames = lf.parse_responses(b"".join(lf.encode_response(r.status, r.payload)
                                         for r in device.responses))
    assert len(frames) == 2 + 3 + 3 + 1 + 2 + 3 and all(r.status == Status.OK for r in frames)
    # Every frame fits the payload limit.
    assert max(len(r.payload) for r in device.responses) <= 1032


def test_serial_transport_errors(board):
    with SerialTransport(board.path, timeout=2.0) as link:
        with pytest.raises(LinkError, match="BAD_ADDRESS") as error:
            link.read_register(8)
        assert error.value.status == Status.BAD_ADDRESS
        with pytest.raises(LinkError, match="READ_MEM of 3 words at word 198.*BAD_ADDRESS"):
            link.read_memory(198, 3)
        with pytest.raises(LinkError, match="BAD_ADDRESS"):
            link.write_memory(199, bytes(32))
        with pytest.raises(ValueError, match="multiple of 16"):
            link.write_memory(0, bytes(15))
        with pytest.raises(ValueError, match="multiple of 16"):
            link.push_instructions(bytes(8))
        # A frame the device sees truncated ends in TIMEOUT, reported as such.
        with pytest.raises(LinkError, match="TIMEOUT") as error:
            link._transact(lf.write_reg(1, 1)[:-1], "truncated WRITE_REG")
        assert error.value.status == Status.TIMEOUT
        assert link.read_register(1) == 0x1001  # no effect, and the link still works
    assert board.device.reg_writes == []


def test_serial_transport_instruction_size():
    """A bridge built with 32-byte (256-bit) instructions: frames split at whole instructions."""
    board = PtyBoard(word_bytes=4, memory_words=8, register_count=1, max_payload=72,
                     insn_bytes=32)
    try:
        insns = random.Random(4).randbytes(5 * 32)
        with SerialTransport(board.path, timeout=2.0, word_bytes=4, max_payload=72,
                             insn_bytes=32) as link:
            link.push_instructions(insns)  # 2 + 2 + 1 instructions
            with pytest.raises(ValueError, match="multiple of 32"):
                link.push_instructions(bytes(16))
        assert board.device.instructions == [int.from_bytes(insns[32 * k:32 * k + 32], "little")
                                             for k in range(5)]
        assert len(board.device.responses) == 3
    finally:
        board.close()


def _answer_once(master, reply):
    """A thread that waits for a request on the pty's master side and answers ``reply``."""
    def answer():
        select.select([master], [], [], 5.0)
        os.read(master, 4096)
        os.write(master, reply)
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_serial_transport_bad_responses():
    master, slave = os.openpty()
    tty.setraw(slave)
    good = lf.encode_response(Status.OK, b"abc")
    corrupt = bytearray(good)
    corrupt[-1] ^= 1
    try:
        with SerialTransport(os.ttyname(slave), timeout=0.3) as link:
            with pytest.raises(LinkError, match="PING: no complete response within 0.3 s"):
                link.ping(b"x")
            os.read(master, 4096)
            cases = [(good[:-1], "no complete response.*incomplete"),
                     (bytes(corrupt), "undecodable response.*CRC"),
                     (b"\xa5" + good[1:], "undecodable response.*sync"),
                     (lf.encode_response(Status.OK, b"abd"), "PING: the echo differs"),
                     (lf.encode_response(9), "unknown status 9")]
            for reply, message in cases:
                thread = _answer_once(master, reply)
                with pytest.raises(LinkError, match=message):
                    link.ping(b"abc")
                thread.join()
            thread = _answer_once(master, lf.encode_response(Status.OK, b"12345"))
            with pytest.raises(LinkError, match="READ_REG 0: response has 5 payload bytes"):
                link.read_register(0)
            thread.join()
    finally:
        os.close(master)
        os.close(slave)


PTY_DIVISOR = 4
PTY = LinkConfig(word_bytes=16, memory_words=256, register_count=8, max_payload=1032,
                 timeout_cycles=100_000)


@pytest.mark.cocotb
def test_serial_transport_through_simulated_uart(tmp_path):
    """SerialTransport on a pty whose other side is UartHostBridge's pins in the simulation."""
    files = {name: tmp_path / name for name in ("path", "done", "state.json")}
    outcome = {}
    rng = random.Random(8)
    data = rng.randbytes(70 * 16)
    insns = rng.randbytes(66 * 16)
    small = [(rng.randrange(100, 250), rng.randbytes(16 * rng.randint(1, 4))) for _ in range(8)]

    def host():
        try:
            deadline = time.monotonic() + 300
            while not files["path"].exists():
                assert time.monotonic() < deadline, "the simulation never opened its pty"
                time.sleep(0.05)
            with SerialTransport(files["path"].read_text(), timeout=60.0) as link:
                outcome["ping"] = link.ping(b"jalapeno")
                link.write_memory(3, data)                # 64 + 6 words
                outcome["read"] = link.read_memory(3, 70)  # 64 + 6 words
                link.push_instructions(insns)             # 64 + 2 instructions
                outcome["register"] = link.read_register(6)
                link.write_register(2, 0x89ABCDEF)
                outcome["register_after"] = link.read_register(2)
                for address, words in small:
                    link.write_memory(address, words)
                outcome["small"] = [link.read_memory(address, len(words) // 16)
                                    for address, words in small]
                try:
                    link.read_memory(250, 10)
                except LinkError as error:
                    outcome["error"] = error
        except BaseException as error:  # reported by the test, not lost in the thread
            outcome["failure"] = error
        finally:
            files["done"].write_text("done")

    thread = threading.Thread(target=host, daemon=True)
    thread.start()
    run_cocotb(UartHostBridge(PTY_DIVISOR, **PTY.bridge_args()), name="link_uart_pty",
               test_module="tests.benches.tb_link_pty", testcase="pty_bridge",
               extra_env=_env(PTY, DIVISOR=PTY_DIVISOR, PTY_PATH_FILE=files["path"],
                              DONE_FILE=files["done"], STATE_FILE=files["state.json"],
                              WALL_SECONDS=240))
    thread.join(timeout=10)
    if "failure" in outcome:
        raise outcome["failure"]
    assert outcome["ping"] == b"jalapeno"
    assert outcome["read"] == data
    assert outcome["register"] == 0x1006 and outcome["register_after"] == 0x89ABCDEF
    expected_memory = [0] * PTY.memory_words
    for address, words in [(3, data)] + small:
        for k in range(len(words) // 16):
            expected_memory[address + k] = int.from_bytes(words[16 * k:16 * k + 16], "little")
    assert outcome["small"] == [bytes(b"".join(expected_memory[a + k].to_bytes(16, "little")
                                               for k in range(len(w) // 16))) for a, w in small]
    assert outcome["error"].status == Status.BAD_ADDRESS
    state = json.loads(files["state.json"].read_text())
    assert [int(word, 16) for word in state["memory"]] == expected_memory
    assert [int(word, 16) for word in state["instructions"]] == [
        int.from_bytes(insns[16 * k:16 * k + 16], "little") for k in range(66)]
    assert state["registers"][2] == 0x89ABCDEF
    frames = 1 + 2 + 2 + 2 + 3 + 2 * len(small) + 1
    assert (state["frames_ok"], state["frames_bad"]) == (frames - 1, 1)
    assert state["framing_errors"] == 0 and state["overruns"] == 0 and not state["errors"]
