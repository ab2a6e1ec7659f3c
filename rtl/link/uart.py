"""UART receiver and transmitter: 8 data bits, no parity, 1 stop bit (8N1), LSB first.

The bit period is ``divisor`` clock cycles (at least 4): a 12 MHz clock and a divisor
of 4 give 3 Mbaud. Both units have a byte stream on the inside and a pin on the
outside; the line idles high.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


__all__ = ["MIN_DIVISOR", "check_divisor", "UartRx", "UartTx"]


#: The smallest bit period in clock cycles: the receiver needs room for its
#: synchronizer delay and a mid-bit sample point.
MIN_DIVISOR = 4


def check_divisor(divisor):
    """Raise :class:`ValueError` unless ``divisor`` is a valid bit period."""
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        raise ValueError(f"Divisor (clock cycles per bit) must be an integer >= "
                         f"{MIN_DIVISOR}, not {divisor!r}")


class UartRx(wiring.Component):
    """8N1 receiver: bytes from the ``rx`` pin to the ``o`` stream.

    ``rx`` passes a 2-flop synchronizer first (the pin is asynchronous). A falling
    edge while idle starts a frame; the start bit is sampled ``(divisor - 1) // 2``
    cycles later (a high level there is a glitch, ignored), then the 8 data bits
    and the stop bit every ``divisor`` cycles, each in the middle of its bit. The
    receiver is idle again from the middle of the stop bit. A sender a few percent
    off the nominal rate is received correctly (``docs/link.md`` gives the margins).

    - A low stop bit is a framing error: the byte is dropped, ``framing_errors``
      counts it, and the receiver waits for the line to go high (a break, or a
      start bit missed, must not produce a stream of bytes) before it looks for the
      next start bit.
    - ``o`` holds one byte until it is taken. A byte completed while the previous
      one is still waiting is dropped and counted in ``overruns`` (the stream rule
      forbids replacing a payload that is offered).

    Both counters are 16 bits and wrap.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, >= 4.

    Members
    -------
    rx : In(1)
        The serial input pin (idle high).
    o : Out(stream.Signature(8))
        Received bytes.
    framing_errors : Out(16)
        Bytes dropped because their stop bit was low.
    overruns : Out(16)
        Bytes dropped because ``o`` still held the previous one.
    """

    def __init__(self, divisor):
        check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "framing_errors": Out(16),
            "overruns": Out(16),
        })

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        line = Signal(init=1)
        m.submodules.synchronizer = FFSynchronizer(self.rx, line, init=1, stages=2)

        timer = Signal(range(divisor))
        bit = Signal(range(8))
        shift = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM(name="rx"):
            with m.State("IDLE"):
                with m.If(~line):
                    # Sample the start bit (divisor - 1) // 2 cycles after seeing it.
                    m.d.sync += timer.eq((divisor - 1) // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(divisor - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shift.eq(Cat(shift[1:], line)),  # LSB first
                        timer.eq(divisor - 1),
                        bit.eq(bit + 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~line):
                    m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    m.next = "BREAK"
                with m.Else():
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overruns.eq(self.overruns + 1)
                    with m.Else():
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shift)]
                    m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: bytes from the ``i`` stream to the ``tx`` pin.

    Each byte is a start bit (low), 8 data bits LSB first and a stop bit (high),
    ``divisor`` cycles each. ``tx`` comes straight from a flip-flop (no glitches)
    and idles high. ``i.ready`` rises in the last cycle of a stop bit, so bytes
    offered back to back leave without a gap: one byte per ``10 * divisor`` cycles.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, >= 4.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1)
        The serial output pin (idle high).
    """

    def __init__(self, divisor):
        check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        shift = Signal(10, init=0x3FF)  # bit 0 is on the line; ones shift in behind
        bits_left = Signal(range(11))
        timer = Signal(range(divisor))
        # ``(bits_left == 0) | (bits_left == 1) & (timer == 0)``, kept in a register (set
        # a cycle ahead from the same state): ``i.ready`` then leaves a flip-flop, not the
        # timer's comparators (which, with the link bridge's response logic behind them,
        # were the ULX3S core's critical path at 83 MHz).
        last_cycle = Signal(init=1)

        m.d.comb += [
            self.tx.eq(shift[0]),
            self.i.ready.eq(last_cycle),
        ]
        with m.If(self.i.valid & last_cycle):
            m.d.sync += [
                shift.eq(Cat(0, self.i.payload, 1)),  # start, data LSB first, stop
                bits_left.eq(10),
                timer.eq(divisor - 1),
                last_cycle.eq(0),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer != 0):
                m.d.sync += [
                    timer.eq(timer - 1),
                    last_cycle.eq((bits_left == 1) & (timer == 1)),
                ]
            with m.Else():
                m.d.sync += [
                    shift.eq(Cat(shift[1:], 1)),
                    bits_left.eq(bits_left - 1),
                    timer.eq(divisor - 1),
                    last_cycle.eq(bits_left == 1),
                ]
        with m.Else():
            m.d.sync += last_cycle.eq(1)
        return m
