"""The simulation transport: the core's Verilator model, clocked in C++ (no Python per cycle)."""

import struct
import subprocess

from sim.core_model import CoreConfig, build_core_model

from .transport import RunOutcome, RunResult, Transport, TransportError


__all__ = ["SimTransport", "MemoryTiming"]


class MemoryTiming:
    """The external memory model: latency (cycles from a request to its first word or its
    acknowledgement) and the cycles between data beats on each channel (1 = a word per
    cycle, the full bandwidth of the port)."""

    def __init__(self, read_latency=32, write_latency=32, read_interval=1, write_interval=1):
        self.read_latency, self.write_latency = read_latency, write_latency
        self.read_interval, self.write_interval = read_interval, write_interval


class SimTransport(Transport):
    """Runs ``build/sim/core-*/obj/Vcore`` (built on first use) and talks to it over pipes."""

    STALL_LIMIT = 1 << 14

    def __init__(self, config=CoreConfig(), timing=MemoryTiming(), progress=None):
        self.config = config
        self.word_bytes = config.lanes
        if self.word_bytes % 4:
            raise ValueError("the simulation harness needs lanes to be a multiple of 4")
        executable = build_core_model(config, progress=progress)
        command = [str(executable), "--dram-words", str(config.dram_words),
                   "--word-bytes", str(self.word_bytes),
                   "--read-latency", str(timing.read_latency),
                   "--write-latency", str(timing.write_latency),
                   "--read-interval", str(timing.read_interval),
                   "--write-interval", str(timing.write_interval)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.cycles = 0

    def _send(self, data):
        try:
            self._process.stdin.write(data)
            self._process.stdin.flush()
        except BrokenPipeError:
            raise TransportError(f"the core simulation exited ({self._process.wait()})") from None

    def _receive(self, size):
        data = self._process.stdout.read(size)
        if len(data) != size:
            raise TransportError(f"the core simulation exited ({self._process.wait()}); "
                                 f"see its message above")
        return data

    def _ok(self):
        if self._receive(1) != b"K":
            raise TransportError("the core simulation answered out of step")

    def _check_range(self, address, words):
        if address < 0 or words < 0 or address + words > self.config.dram_words:
            raise ValueError(f"memory words {address}..{address + words} are outside the "
                             f"simulated memory of {self.config.dram_words} words")

    def write_memory(self, address, data):
        data = bytes(data)
        if len(data) % self.word_bytes:
            raise ValueError(f"write of {len(data)} bytes is not a whole number of "
                             f"{self.word_bytes}-byte words")
        words = len(data) // self.word_bytes
        self._check_range(address, words)
        self._send(b"W" + struct.pack("<II", address, words) + data)
        self._ok()

    def read_memory(self, address, words):
        self._check_range(address, words)
        self._send(b"R" + struct.pack("<II", address, words))
        return self._receive(words * self.word_bytes)

    def push_instructions(self, data):
        data = bytes(data)
        if len(data) % 32:
            raise ValueError("instructions are 32 bytes each")
        self._send(b"I" + struct.pack("<I", len(data) // 32) + data)
        self._ok()

    def read_register(self, index):
        self._send(b"G" + struct.pack("<I", index))
        return struct.unpack("<I", self._receive(4))[0]

    def write_register(self, index, value):
        self._send(b"P" + struct.pack("<II", index, value & 0xFFFFFFFF))
        self._ok()

    def submit_requests(self, words):
        words = list(words)
        self._send(b"B" + struct.pack("<I", len(words))
                   + b"".join(int(w).to_bytes(16, "little") for w in words))
        self._ok()

    def complete_batches(self, tags):
        tags = list(tags)
        self._send(b"F" + struct.pack("<I", len(tags)) + b"".join(struct.pack("<I", t) for t in tags))
        self._ok()

    def read_events(self):
        self._send(b"E")
        (n,) = struct.unpack("<I", self._receive(4))
        responses = list(struct.unpack(f"<{n}I", self._receive(4 * n))) if n else []
        (n,) = struct.unpack("<I", self._receive(4))
        data = self._receive(32 * n)
        words = [int.from_bytes(data[32 * i:32 * i + 32], "little") for i in range(n)]
        return responses, words

    def soft_reset(self):
        self._send(b"S")
        self._ok()

    def run(self, max_cycles, until_batch=False):
        self._send(b"X" + struct.pack("<QQB", max_cycles, self.STALL_LIMIT, int(until_batch)))
        outcome, cycles = struct.unpack("<BQ", self._receive(9))
        self.cycles += cycles
        return RunResult(RunOutcome(outcome), cycles)

    def close(self):
        if self._process.poll() is None:
            try:
                self._send(b"Q")
                self._receive(1)
            except TransportError:
                pass
            self._process.stdin.close()
            self._process.wait(timeout=10)
        for pipe in (self._process.stdin, self._process.stdout):
            if not pipe.closed:
                pipe.close()
