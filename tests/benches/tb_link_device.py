"""cocotb models shared by the host-link benches (no cocotb tests of its own).

- :class:`LinkDevice`: what sits behind a host bridge's device-side ports: a memory
  with a random read latency and random stalls, a register file and an instruction
  sink. It logs every access in the same form as
  :class:`sim.golden.link_frame.ReferenceDevice`.
- :class:`ByteSource` / :class:`ByteSink`: the host side of the bridge's ``rx`` and
  ``tx`` byte streams.
- :class:`UartPins`: the host side of a UART: bytes into the ``rx`` pin bit by bit,
  bits from the ``tx`` pin into bytes.

Timing. Python in the loop every cycle is what limits the speed of these benches,
so the stream models take one trigger per cycle: :func:`step_models` wakes at the
falling clock edge and calls every model's ``step()``, which reads the DUT's
``valid`` / ``ready`` outputs, writes its own, and records the transfers that the
next rising edge makes. That is exact because the host bridge's stream outputs
depend only on its state (registers), never combinationally on the inputs the
models write in the same step (``HostBridge`` documents this); the values read at
the falling edge are the ones the next rising edge sees.
"""

import collections
import os

import cocotb
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

from tests.test_link import LinkConfig


__all__ = ["LinkDevice", "ByteSource", "ByteSink", "UartPins", "step_models", "config_from_env",
           "describe"]


class _Out:
    """A stream the DUT drives (valid, payload) and the model accepts (ready)."""

    def __init__(self, dut, prefix):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.ready_value = 0
        self.ready.value = 0

    def accept(self, ready):
        """Set ``ready``; return the payload that transfers at the next edge, or None."""
        if ready != self.ready_value:
            self.ready.value = ready
            self.ready_value = ready
        if ready and self.valid.value:
            return self.payload.value.to_unsigned()
        return None


class _In:
    """A stream the model drives (valid, payload) and the DUT accepts (ready).

    :meth:`offer` a payload, or call :meth:`idle` in a step with nothing to offer;
    an offered payload stays (``valid`` high, payload unchanged) until taken.
    """

    def __init__(self, dut, prefix):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid_value = 0   # the valid signal as written
        self.offered = False   # a payload is offered and not yet taken
        self.valid.value = 0

    def offer(self, payload):
        """Offer ``payload`` (if none is pending); True if it transfers at the next edge."""
        if not self.offered:
            if not self.valid_value:
                self.valid.value = 1
                self.valid_value = 1
            self.payload.value = payload
            self.offered = True
        if self.ready.value:
            self.offered = False
            return True
        return False

    def idle(self):
        if self.valid_value and not self.offered:
            self.valid.value = 0
            self.valid_value = 0


class LinkDevice:
    """Memory, registers and instruction sink on a host bridge's device ports.

    Parameters
    ----------
    memory, registers : list of int
        Initial contents (copied).
    stall : float
        Probability that a ``ready`` is low in a cycle, and that a read result due
        is held back another cycle.
    max_latency : int
        Extra cycles (uniform in ``0..max_latency``) before a read result is offered;
        the base latency is one cycle, as for a block RAM.
    max_outstanding : int
        Reads in flight that the memory accepts before it stops taking addresses.
    """

    def __init__(self, dut, *, memory, registers, rng, stall=0.3, max_latency=5,
                 max_outstanding=3):
        self.memory = list(memory)
        self.registers = list(registers)
        self.rng = rng
        self.stall = stall
        self.max_latency = max_latency
        self.max_outstanding = max_outstanding
        self.mem_write = _Out(dut, "mem_write")
        self.mem_read_address = _Out(dut, "mem_read_address")
        self.mem_read_data = _In(dut, "mem_read_data")
        self.insn = _Out(dut, "insn")
        self.reg_read_address = _Out(dut, "reg_read_address")
        self.reg_read_data = _In(dut, "reg_read_data")
        self.reg_write = _Out(dut, "reg_write")
        self.instructions = []
        self.mem_writes = []
        self.mem_reads = []
        self.reg_writes = []
        self.reg_reads = []
        self.errors = []
        self._mem_queue = collections.deque()   # (due cycle, word)
        self._reg_queue = collections.deque()
        self._outs = (self.mem_write, self.mem_read_address, self.insn,
                      self.reg_read_address, self.reg_write)
        self.cycle = 0

    def effects(self):
        """How many accesses the bridge has made so far."""
        return (len(self.instructions) + len(self.mem_writes) + len(self.mem_reads)
                + len(self.reg_writes) + len(self.reg_reads))

    @property
    def busy(self):
        return bool(self._mem_queue or self._reg_queue)

    def _ready(self):
        return int(self.rng.random() >= self.stall)

    def _due(self):
        return self.cycle + 1 + self.rng.randint(0, self.max_latency)

    def _answer(self, port, queue):
        if queue and (port.offered or (queue[0][0] <= self.cycle
                                       and self.rng.random() >= self.stall)):
            if port.offer(queue[0][1]):
                queue.popleft()
        else:
            port.idle()

    def step(self):
        self.cycle += 1
        word = self.mem_write.accept(self._ready())
        if word is not None:
            address, data = word & 0xFFFFFFFF, word >> 32
            if address < len(self.memory):
                self.memory[address] = data
            else:
                self.errors.append(f"write beyond memory: word {address}")
            self.mem_writes.append((address, data))

        room = len(self._mem_queue) < self.max_outstanding
        address = self.mem_read_address.accept(self._ready() if room else 0)
        if address is not None:
            self.mem_reads.append(address)
            if address >= len(self.memory):
                self.errors.append(f"read beyond memory: word {address}")
            self._mem_queue.append((self._due(), self.memory[address % len(self.memory)]))
        self._answer(self.mem_read_data, self._mem_queue)

        insn = self.insn.accept(self._ready())
        if insn is not None:
            self.instructions.append(insn)

        index = self.reg_read_address.accept(self._ready())
        if index is not None:
            self.reg_reads.append(index)
            if index >= len(self.registers):
                self.errors.append(f"read of register {index}")
            self._reg_queue.append((self._due(), self.registers[index % len(self.registers)]))
        self._answer(self.reg_read_data, self._reg_queue)

        write = self.reg_write.accept(self._ready())
        if write is not None:
            index, value = write & 0xFFFF, write >> 16
            if index < len(self.registers):
                self.registers[index] = value
            else:
                self.errors.append(f"write of register {index}")
            self.reg_writes.append((index, value))

    def any_valid(self):
        """Does the bridge offer anything on a device port?"""
        return any(port.valid.value for port in self._outs)

    async def run_events(self, clk):
        """Serve the ports for ever, stepping every cycle only while something is going on.

        Between accesses it sleeps until one of the bridge's ``valid`` outputs rises.
        """
        edges = [RisingEdge(port.valid) for port in self._outs]
        falling = FallingEdge(clk)
        while True:
            await falling
            self.step()
            if not self.busy and not self.any_valid():
                await First(*edges)


class ByteSource:
    """Sends bytes on the bridge's ``rx`` stream with random gaps of at most ``max_gap`` cycles."""

    def __init__(self, dut, rng, *, stall=0.2, max_gap=4, prefix="rx"):
        self.port = _In(dut, prefix)
        self.rng = rng
        self.stall = stall
        self.max_gap = max_gap
        self.data = b""
        self.position = 0
        self._gap = 0

    def load(self, data):
        self.data = bytes(data)
        self.position = 0
        self._gap = 0

    @property
    def done(self):
        return self.position >= len(self.data)

    def step(self):
        port = self.port
        if not port.offered:
            if self.done or (self._gap < self.max_gap and self.rng.random() < self.stall):
                self._gap += 1
                port.idle()
                return
            self._gap = 0
        if port.offer(self.data[self.position]):
            self.position += 1


class ByteSink:
    """Collects bytes from the bridge's ``tx`` stream, ``ready`` low with probability ``stall``."""

    def __init__(self, dut, rng, *, stall=0.25, prefix="tx"):
        self.port = _Out(dut, prefix)
        self.rng = rng
        self.stall = stall
        self.received = bytearray()

    def step(self):
        byte = self.port.accept(int(self.rng.random() >= self.stall))
        if byte is not None:
            self.received.append(byte)


async def step_models(falling, models):
    """One clock cycle: wait for ``falling`` (a ``FallingEdge(clk)`` trigger), step every model."""
    await falling
    for model in models:
        model.step()


class UartPins:
    """The host's UART: 8N1 at ``divisor`` clock cycles (of ``period_ns``) per bit.

    :meth:`send_byte` drives ``rx`` (bit edges at falling clock edges); a background
    monitor samples ``tx`` at a falling clock edge near the middle of every bit and
    appends each byte to :attr:`received` (a low stop bit counts in
    :attr:`framing_errors` instead).
    """

    def __init__(self, dut, divisor, *, period_ns=10, rx="rx", tx="tx"):
        self.rx = getattr(dut, rx)
        self.tx = getattr(dut, tx)
        self.clk = dut.clk
        self.divisor = divisor
        self.period_ns = period_ns
        self.bit_ns = divisor * period_ns
        self.received = bytearray()
        self.framing_errors = 0
        self.rx.value = 1

    def start_monitor(self):
        return cocotb.start_soon(self._watch())

    async def _watch(self):
        # tx changes at rising clock edges; sample half a clock period away from them.
        half = (self.divisor // 2) * self.period_ns + self.period_ns // 2
        bit = Timer(self.bit_ns, unit="ns")
        while True:
            await FallingEdge(self.tx)
            await Timer(half, unit="ns")
            if self.tx.value:
                continue  # a glitch, not a start bit
            byte = 0
            for k in range(8):
                await bit
                byte |= int(self.tx.value) << k
            await bit
            if self.tx.value:
                self.received.append(byte)
            else:
                self.framing_errors += 1

    async def send_byte(self, byte, *, stop=1, gap_bits=0):
        """One character; ``stop=0`` sends a low stop bit (then the line idles a bit time)."""
        await FallingEdge(self.clk)
        bit = Timer(self.bit_ns, unit="ns")
        for value in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            self.rx.value = value
            await bit
        self.rx.value = 1
        if stop == 0:
            await bit
        if gap_bits:
            await Timer(gap_bits * self.bit_ns, unit="ns")

    async def wait_bytes(self, count, *, timeout_ns):
        """Wait until :attr:`received` holds ``count`` bytes; False on time-out."""
        waited = 0
        step = Timer(10 * self.bit_ns, unit="ns")
        while len(self.received) < count:
            if waited >= timeout_ns:
                return False
            await step
            waited += 10 * self.bit_ns
        return True


def config_from_env():
    """The bridge parameters the pytest test passed in the environment."""
    return LinkConfig(word_bytes=int(os.environ["WORD_BYTES"]),
                      memory_words=int(os.environ["MEMORY_WORDS"]),
                      register_count=int(os.environ["REGISTER_COUNT"]),
                      max_payload=int(os.environ["MAX_PAYLOAD"]),
                      timeout_cycles=int(os.environ["TIMEOUT_CYCLES"]),
                      insn_bytes=int(os.environ.get("INSN_BYTES", "16")))


def describe(index, chunk, expected, got):
    """A mismatch report: the chunk, what was sent, expected and received."""
    return (f"chunk {index} ({chunk.category}{', garbage first' if chunk.garbage else ''}): "
            f"sent {chunk.data.hex()}\n  expected {expected.hex()}\n  got      {bytes(got).hex()}")
