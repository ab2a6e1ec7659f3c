"""How the host runtime reaches a core: the transport interface.

:class:`Accelerator` (``jalapeno/accelerator.py``) speaks only to this interface, so
the same runtime runs on the RTL simulation (:class:`jalapeno.sim_transport.SimTransport`)
and on a board over the UART link (a serial transport implements the same methods).
Addresses count words of ``word_bytes`` bytes.
"""

import abc
import enum
from dataclasses import dataclass


__all__ = ["Transport", "RunOutcome", "RunResult", "TransportError"]


class TransportError(RuntimeError):
    """The link to the device failed (not a device-reported error)."""


class RunOutcome(enum.IntEnum):
    IDLE = 0       # every instruction ran; the core is idle
    ERROR = 1      # the core raised its error status
    BLOCKED = 2    # units wait on dependency tokens that nothing will push (a bad program)
    TIMEOUT = 3    # the cycle or time budget ran out
    BATCH = 4      # the scheduler formed a batch (run(until_batch=True))


@dataclass
class RunResult:
    outcome: RunOutcome
    cycles: int    # cycles simulated (simulation), or 0 when the transport cannot tell


class Transport(abc.ABC):
    word_bytes: int

    @abc.abstractmethod
    def write_memory(self, address, data):
        """Write ``data`` (bytes, a multiple of ``word_bytes``) at word ``address``."""

    @abc.abstractmethod
    def read_memory(self, address, words):
        """``words`` words from word ``address``, as bytes."""

    @abc.abstractmethod
    def push_instructions(self, data):
        """Queue encoded instructions (bytes, 32 per instruction, little-endian)."""

    @abc.abstractmethod
    def read_register(self, index):
        """A 32-bit core register (``rtl.core.status.Register`` or a counter)."""

    @abc.abstractmethod
    def soft_reset(self):
        """Clear the core's state and error (buffer contents stay)."""

    @abc.abstractmethod
    def run(self, max_cycles, until_batch=False):
        """Let the core run until it is idle with nothing queued (or, ``until_batch``, until
        the scheduler sends a batch word), fails, or ``max_cycles`` pass; a RunResult."""

    def write_register(self, index, value):
        """Write a writable core register (the scheduler's configuration)."""
        raise NotImplementedError

    def submit_requests(self, words):
        """Queue scheduler requests (``SchedulerRequest`` bit patterns, ints)."""
        raise NotImplementedError

    def complete_batches(self, tags):
        """Report batches done (their in-flight tags)."""
        raise NotImplementedError

    def read_events(self):
        """``(responses, batch_words)`` the scheduler sent since the last call (ints)."""
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
