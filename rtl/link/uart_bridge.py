"""The host bridge behind a UART: what a board's top level instantiates."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .bridge import (DEFAULT_INSN_BYTES, DEFAULT_MAX_PAYLOAD, HostBridge, check_parameters,
                     device_members)
from .uart import UartRx, UartTx, check_divisor


__all__ = ["UartHostBridge"]


class UartHostBridge(wiring.Component):
    """:class:`UartRx` -> :class:`HostBridge` -> :class:`UartTx`, 8N1 on two pins.

    The UART receiver hands bytes straight to the bridge, which does not take
    bytes while it executes a request or sends a response; the host waits for each
    response before it sends the next request (stop-and-wait). A byte arriving
    while the previous one is still waiting is dropped and counted in ``overruns``;
    a byte with a bad stop bit is dropped and counted in ``framing_errors``. Either
    way the frame it belonged to ends with BAD_CRC or TIMEOUT, never with an effect.

    Choose ``timeout_cycles`` well above the longest pause a host makes inside a
    frame: a USB serial adapter can pause for a millisecond or more between
    packets. The default is 1,000,000 cycles (83 ms at 12 MHz); the least allowed is
    two character times (``20 * divisor`` cycles).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4): ``clock frequency / baud rate``.
    word_bytes, memory_words, register_count, max_payload, timeout_cycles, insn_bytes
        As for :class:`HostBridge`.

    Members
    -------
    rx : In(1)
        Serial input pin (idle high).
    tx : Out(1)
        Serial output pin (idle high).
    framing_errors, overruns : Out(16)
        From the UART receiver.
    mem_write, mem_read_address, mem_read_data, insn, reg_read_address, reg_read_data
        As for :class:`HostBridge`.
    reg_write, frames_ok, frames_bad
        As for :class:`HostBridge`.
    """

    def __init__(self, divisor, word_bytes=16, memory_words=4096, register_count=16,
                 max_payload=DEFAULT_MAX_PAYLOAD, timeout_cycles=1_000_000,
                 insn_bytes=DEFAULT_INSN_BYTES):
        check_divisor(divisor)
        self._bridge_args = dict(word_bytes=word_bytes, memory_words=memory_words,
                                 register_count=register_count, max_payload=max_payload,
                                 timeout_cycles=timeout_cycles, insn_bytes=insn_bytes)
        check_parameters(**self._bridge_args)
        if timeout_cycles < 20 * divisor:
            raise ValueError(f"Timeout ({timeout_cycles} cycles) must be at least 2 byte "
                             f"times ({20 * divisor} cycles at divisor {divisor})")
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "framing_errors": Out(16),
            "overruns": Out(16),
            **device_members(word_bytes, insn_bytes),
        })

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UartRx(self._divisor)
        m.submodules.uart_tx = uart_tx = UartTx(self._divisor)
        m.submodules.bridge = bridge = HostBridge(**self._bridge_args)

        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
            self.framing_errors.eq(uart_rx.framing_errors),
            self.overruns.eq(uart_rx.overruns),
            self.frames_ok.eq(bridge.frames_ok),
            self.frames_bad.eq(bridge.frames_bad),
        ]
        wiring.connect(m, uart_rx.o, bridge.rx)
        wiring.connect(m, bridge.tx, uart_tx.i)
        for name in ("mem_write", "mem_read_address", "mem_read_data", "insn",
                     "reg_read_address", "reg_read_data", "reg_write"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(bridge, name))
        return m
