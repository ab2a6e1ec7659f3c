"""The host side of the board link: framed requests over a serial port (pyserial).

The protocol is specified in ``docs/link.md``; frames are built and parsed by
:mod:`sim.golden.link_frame`, the same code the hardware is verified against.
Requests are stop-and-wait: each one is sent and its response awaited before the
next, which is what the bridge (``rtl/link/bridge.py``) requires on a UART.
"""

from dataclasses import dataclass

import serial

from sim.golden import link_frame as lf
from sim.golden.link_frame import Status
from .transport import Transport


__all__ = ["LinkError", "SerialTransport", "CoreSerialTransport", "SchedulerGeometry"]


class LinkError(Exception):
    """A request failed: an error status, no (or a truncated) response, or a bad response.

    Attributes
    ----------
    status : Status or None
        The device's status code, if it answered with one.
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class SerialTransport:
    """Read and write the accelerator's memory and registers, push instructions.

    Parameters
    ----------
    port : str
        Serial device (``/dev/ttyUSB1``, a pty's path, ...).
    baudrate : int
        Line rate; the board's clock divided by the bridge's ``divisor``.
    timeout : float
        Seconds to wait for the bytes of a response before raising :class:`LinkError`.
    word_bytes : int
        The bridge's memory word size.
    max_payload : int
        The bridge's ``max_payload``: large transfers are split into frames that fit it.
    insn_bytes : int
        The bridge's instruction word size.

    No request is retried: a PUSH_INSN whose response was lost may have executed,
    and pushing it again would run the instructions twice.
    """

    def __init__(self, port, baudrate=3_000_000, timeout=1.0, word_bytes=lf.DEFAULT_WORD_BYTES,
                 max_payload=lf.DEFAULT_MAX_PAYLOAD, insn_bytes=lf.INSN_BYTES):
        for what, value in (("Word size", word_bytes), ("Instruction size", insn_bytes)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{what} must be a power of two, not {value!r}")
        if max_payload < max(4 + word_bytes, insn_bytes):
            raise ValueError(f"Maximum payload {max_payload} cannot hold one word and its "
                             f"address, or one instruction")
        self.word_bytes = word_bytes
        self.insn_bytes = insn_bytes
        self.max_payload = max_payload
        self.timeout = timeout
        self._serial = serial.Serial(port, baudrate=baudrate, timeout=timeout)

    def close(self):
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one request ---------------------------------------------------------------------------

    def _transact(self, frame, what):
        """Send one request frame; return its response payload, or raise :class:`LinkError`."""
        port = self._serial
        port.reset_input_buffer()  # nothing stale (a late response) may pass for the answer
        port.write(frame)
        port.flush()
        try:
            response = lf.ResponseParser().read(port.read)
        except lf.TruncatedFrameError as error:
            raise LinkError(f"{what}: no complete response within {self.timeout} s ({error})")
        except lf.FrameError as error:
            raise LinkError(f"{what}: undecodable response ({error})")
        if response.status != Status.OK:
            raise LinkError(f"{what}: the device answered {response.status_name} "
                            f"(status {response.status})",
                            status=Status(response.status) if response.status in
                            Status._value2member_map_ else None)
        return response.payload

    def _expect_length(self, payload, length, what):
        if len(payload) != length:
            raise LinkError(f"{what}: response has {len(payload)} payload bytes, "
                            f"expected {length}")
        return payload

    # --- operations ----------------------------------------------------------------------------

    def ping(self, payload=b""):
        """Send ``payload`` and check that it comes back unchanged; returns it."""
        payload = bytes(payload)
        if len(payload) > self.max_payload:
            raise ValueError(f"A PING carries at most {self.max_payload} bytes")
        echo = self._transact(lf.ping(payload), "PING")
        if echo != payload:
            raise LinkError(f"PING: the echo differs from the {len(payload)} bytes sent")
        return echo

    def write_memory(self, address_words, data):
        """Write ``data`` (whole words) from word ``address_words`` on."""
        data = bytes(data)
        wb = self.word_bytes
        if len(data) % wb or not data:
            raise ValueError(f"Data must be a positive multiple of {wb} bytes, "
                             f"not {len(data)}")
        per_frame = lf.max_write_words(wb, self.max_payload)
        words = len(data) // wb
        for first in range(0, words, per_frame):
            count = min(per_frame, words - first)
            address = address_words + first
            self._transact(lf.write_mem(address, data[first * wb:(first + count) * wb]),
                           f"WRITE_MEM of {count} words at word {address}")

    def read_memory(self, address_words, words):
        """Read ``words`` words from word ``address_words`` on; returns their bytes."""
        if words < 1:
            raise ValueError(f"Word count must be positive, not {words!r}")
        wb = self.word_bytes
        per_frame = lf.max_read_words(wb, self.max_payload)
        out = bytearray()
        for first in range(0, words, per_frame):
            count = min(per_frame, words - first)
            address = address_words + first
            what = f"READ_MEM of {count} words at word {address}"
            out += self._expect_length(self._transact(lf.read_mem(address, count), what),
                                       count * wb, what)
        return bytes(out)

    def push_instructions(self, words):
        """Push instructions: ``words`` is N * ``insn_bytes`` bytes, each instruction
        little-endian."""
        words = bytes(words)
        size = self.insn_bytes
        if len(words) % size or not words:
            raise ValueError(f"Instructions must be a positive multiple of {size} bytes, "
                             f"not {len(words)}")
        per_frame = lf.max_insn_words(self.max_payload, size)
        count = len(words) // size
        for first in range(0, count, per_frame):
            n = min(per_frame, count - first)
            self._transact(lf.push_insn(words[first * size:(first + n) * size]),
                           f"PUSH_INSN of {n} instructions")

    def read_register(self, index):
        """The u32 value of register ``index``."""
        what = f"READ_REG {index}"
        payload = self._expect_length(self._transact(lf.read_reg(index), what), 4, what)
        return int.from_bytes(payload, "little")

    def write_register(self, index, value):
        """Set register ``index`` to the u32 ``value``."""
        self._transact(lf.write_reg(index, value), f"WRITE_REG {index}")


@dataclass(frozen=True)
class SchedulerGeometry:
    """What ``jalapeno.serving.Server`` needs to decode batch words: the scheduler's build
    parameters, read from the link's INFO register."""
    sched_queue_depth: int
    sched_inflight: int
    batch_pieces: int


class CoreSerialTransport(SerialTransport, Transport):
    """The :class:`jalapeno.transport.Transport` of a board running
    :class:`rtl.core.linked_core.LinkedCore`: the same runtime API as the simulation.

    ``run`` polls the core's STATUS register until it is idle or reports an error (or
    ``run_timeout`` seconds pass); a core that stays blocked on dependency tokens for
    ``blocked_polls`` polls in a row is reported BLOCKED. ``soft_reset`` writes the
    link's control register.

    Serving (``jalapeno.serving.Server``): ``submit_requests``, ``complete_batches`` and
    ``read_events`` move the scheduler's words through the link registers of
    :class:`rtl.core.linked_core.SchedLinkRegister` (``docs/link.md``, "The scheduler
    over the link"), never writing into a full FIFO; ``run(max_cycles, until_batch=True)``
    polls until a batch word waits, the core reports an error, ``max_cycles`` cycles of the
    scheduler's counter pass (TIMEOUT) or ``run_timeout`` seconds pass (TIMEOUT). Events
    read while waiting for FIFO space are kept for the next ``read_events``. On a core
    built without the scheduler these raise :class:`LinkError` saying so.
    """

    def __init__(self, port, *, lanes, run_timeout=60.0, blocked_polls=20, **kwargs):
        super().__init__(port, word_bytes=lanes, insn_bytes=32, **kwargs)
        self.run_timeout = run_timeout
        self.blocked_polls = blocked_polls
        self._config = None
        self._responses = []
        self._batch_words = []

    def soft_reset(self):
        from rtl.core.linked_core import CONTROL_REGISTER
        self.write_register(CONTROL_REGISTER, 1)
        self._responses.clear()     # the link's FIFOs are emptied too, as in the simulation
        self._batch_words.clear()

    # --- the scheduler over the link ------------------------------------------------------

    def _sched(self, operation, *args):
        """A scheduler link-register access; BAD_ADDRESS means the core has no scheduler."""
        try:
            return operation(*args)
        except LinkError as error:
            if error.status == Status.BAD_ADDRESS:
                raise LinkError("the core was built without the scheduler (CONFIG bit 3 is "
                                "clear): serving needs a LinkedCore with scheduler=True",
                                status=error.status) from None
            raise

    @property
    def config(self):
        """The scheduler's geometry (``sched_queue_depth``, ``sched_inflight``), as
        ``SimTransport.config`` has it."""
        if self._config is None:
            from rtl.core.linked_core import SchedLinkRegister as R
            info = self._sched(self.read_register, R.INFO)
            self._config = SchedulerGeometry(info & 0xFFFF, (info >> 16) & 0xFF, info >> 24)
        return self._config

    def _link_status(self):
        """``(responses waiting, batch words waiting, request slots free, done slots free)``."""
        from rtl.core.linked_core import SchedLinkRegister as R
        value = self._sched(self.read_register, R.STATUS)
        return tuple((value >> shift) & 0xFF for shift in (0, 8, 16, 24))

    def _drain(self, status=None):
        """Move the events waiting in the link's FIFOs into the host's lists."""
        from rtl.core.linked_core import SchedLinkRegister as R
        responses, words = (status or self._link_status())[:2]
        for _ in range(responses):
            value = self.read_register(R.RESPONSE)
            if not value >> 31:
                raise LinkError("RESPONSE: the link's response FIFO was empty, out of step "
                                "with its count")
            self._responses.append(value & 0x7FFFFFFF)
        pieces = self.config.batch_pieces
        for _ in range(words):
            word = 0
            for i in range(pieces):
                value = self.read_register(R.BATCH + i)
                if not value >> 31:
                    raise LinkError("BATCH: the link's batch FIFO was empty, out of step with "
                                    "its count")
                word |= (value & 0x7FFFFFFF) << (31 * i)
            self._batch_words.append(word)

    def _push(self, words, slot, what, write):
        """Write ``words`` with ``write``, each only when ``slot`` of the link status says
        its FIFO has room (draining events meanwhile, so the scheduler can go on)."""
        import time
        deadline = time.monotonic() + self.run_timeout
        free = 0
        for word in words:
            while not free:
                status = self._link_status()
                free = status[slot]
                if not free:
                    self._drain(status)
                    if time.monotonic() > deadline:
                        raise LinkError(f"{what}: the scheduler took nothing for "
                                        f"{self.run_timeout} s")
            write(word)
            free -= 1

    def submit_requests(self, words):
        from rtl.core.linked_core import SchedLinkRegister as R

        def write(word):
            word = int(word)
            if not 0 <= word < 1 << 128:
                raise ValueError(f"a request word has 128 bits at most, not {word:#x}")
            for i in range(4):
                self.write_register(R.REQUEST + i, (word >> (32 * i)) & 0xFFFFFFFF)
        self._push(list(words), 2, "submit_requests", write)

    def complete_batches(self, tags):
        from rtl.core.linked_core import SchedLinkRegister as R
        tags = [int(t) for t in tags]
        for tag in tags:   # the device drops a tag wider than its port (counted in DROPPED)
            if not 0 <= tag < 1 << 32:
                raise ValueError(f"a batch tag is a u32, not {tag}")
        self._push(tags, 3, "complete_batches",
                   lambda tag: self.write_register(R.DONE, tag))

    def read_events(self):
        self._drain()
        responses, words = self._responses, self._batch_words
        self._responses, self._batch_words = [], []
        return responses, words

    def _run_until_batch(self, max_cycles):
        import time

        from rtl.core.status import Register

        from .transport import RunOutcome, RunResult
        deadline = time.monotonic() + self.run_timeout
        start = self._sched(self.read_register, Register.SCHED_NOW)
        while True:
            if self.read_register(Register.STATUS) & 2:
                return RunResult(RunOutcome.ERROR, 0)
            if self._batch_words or self._link_status()[1]:
                return RunResult(RunOutcome.BATCH, 0)
            ran = (self.read_register(Register.SCHED_NOW) - start) & 0xFFFFFFFF
            if ran >= max_cycles or time.monotonic() > deadline:
                return RunResult(RunOutcome.TIMEOUT, ran)

    def run(self, max_cycles, until_batch=False):
        import time

        from rtl.core.status import Register

        from .transport import RunOutcome, RunResult
        if until_batch:
            return self._run_until_batch(max_cycles)
        deadline = time.monotonic() + self.run_timeout
        blocked = 0
        while True:
            status = self.read_register(Register.STATUS)
            if status & 2:
                return RunResult(RunOutcome.ERROR, 0)
            if status & 1:
                return RunResult(RunOutcome.IDLE, 0)
            blocked = blocked + 1 if status & 0x100 else 0
            if blocked >= self.blocked_polls:
                return RunResult(RunOutcome.BLOCKED, 0)
            if time.monotonic() > deadline:
                return RunResult(RunOutcome.TIMEOUT, 0)
