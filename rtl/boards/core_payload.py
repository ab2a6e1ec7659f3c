"""The board payload that runs the accelerator: :class:`~rtl.core.linked_core.LinkedCore`.

The board top (:mod:`.board_top`) builds a payload from a factory called with the
``sync`` clock it achieved; :func:`core_payload_factory` returns such a factory for
one core configuration and UART baud rate. The payload is the core behind the
UART host link with its memory on chip; ``jalapeno.serial_transport.CoreSerialTransport``
talks to it with the same runtime (``Accelerator``) as the simulation.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..core.linked_core import LinkedCore


__all__ = ["DEFAULT_BAUD", "MAX_BAUD_ERROR", "uart_divisor", "CorePayload", "core_payload_factory"]


#: The host link's default baud rate (the FT231X of the ULX3S and the FT2232H of the
#: iCEBreaker both do 3 Mbaud).
DEFAULT_BAUD = 3_000_000

#: Largest relative baud-rate error accepted (a UART tolerates about 2 % in total,
#: shared between both ends).
MAX_BAUD_ERROR = 0.01


def uart_divisor(clk_frequency, baud):
    """Clock cycles per UART bit for ``baud`` at ``clk_frequency`` Hz.

    Raises ``ValueError`` when the nearest divisor is below 4 (the receiver samples
    mid-bit) or its baud rate is off by more than :data:`MAX_BAUD_ERROR`.
    """
    if clk_frequency <= 0 or baud <= 0:
        raise ValueError(f"clock ({clk_frequency} Hz) and baud rate ({baud}) must be positive")
    divisor = round(clk_frequency / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud needs at least {4 * baud / 1e6:g} MHz; the clock is "
                         f"{clk_frequency / 1e6:g} MHz")
    error = abs(clk_frequency / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud at {clk_frequency / 1e6:g} MHz: the nearest divisor "
                         f"{divisor} is off by {100 * error:.2f} % (at most "
                         f"{100 * MAX_BAUD_ERROR:g} %); choose another clock or baud rate")
    return divisor


class CorePayload(wiring.Component):
    """A :class:`LinkedCore` with the board top's payload ports.

    Parameters
    ----------
    clk_frequency : float
        The ``sync`` clock in Hz (sets the UART divisor).
    baud : int
        UART baud rate (see :func:`uart_divisor`).
    memory_words : int
        The core's on-chip "external" memory, in words of ``lanes`` bytes.
    **core_args
        :class:`~rtl.core.core.Core` parameters.

    Members
    -------
    uart_rx : In(1)
    uart_tx : Out(1)
    led_error : Out(1)
        The core's latched error (cleared by a soft reset over the link).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    led_error: Out(1)

    def __init__(self, *, clk_frequency, baud=DEFAULT_BAUD, memory_words=4096, **core_args):
        self.divisor = uart_divisor(clk_frequency, baud)
        self.baud = baud
        self._linked = LinkedCore(divisor=self.divisor, memory_words=memory_words, **core_args)
        super().__init__()

    def verilog_modules(self):
        """The shared PE module of the core's array (see :mod:`.board_top`)."""
        return self._linked.verilog_modules()

    def elaborate(self, platform):
        m = Module()
        m.submodules.linked = linked = self._linked
        m.d.comb += [linked.rx.eq(self.uart_rx), self.uart_tx.eq(linked.tx),
                     self.led_error.eq(linked.error)]
        return m


def core_payload_factory(*, baud=DEFAULT_BAUD, memory_words=4096, **core_args):
    """``factory(clk_frequency=hz)`` -> :class:`CorePayload` (for :class:`.board_top.BoardTop`)."""
    def factory(*, clk_frequency):
        return CorePayload(clk_frequency=clk_frequency, baud=baud, memory_words=memory_words,
                           **core_args)
    factory.core_args = dict(core_args)
    factory.memory_words = memory_words
    factory.baud = baud
    return factory
