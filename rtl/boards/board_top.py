"""The top of a board build: PLL clock and reset, UART pins, status LEDs, a payload.

A **payload** is what the board runs (the placeholder
:class:`~.engine_payload.EnginePayload` today; the UART host link and the
accelerator core later). The board top builds it from a factory::

    payload = factory(clk_frequency=f_hz)   # the achieved sync clock, in Hz

which returns an Elaboratable with these attributes, all in the ``sync`` domain:

============  =======  ==========================================================
``uart_rx``   In(1)    the UART receive line, already synchronized (idle high)
``uart_tx``   Out(1)   the UART transmit line (idle high)
``led_error`` Out(1)   a sticky error, shown on the board's error LED
============  =======  ==========================================================

A payload that instantiates shared Verilog modules (the systolic array's PE,
``shared_pe_module=True``) lists them in ``verilog_modules()`` as
``{module name: component}``, like :class:`~rtl.matmul.engine.MatmulEngine`;
the board top adds each to the build as an RTLIL file.

The board top itself:

- the ``sync`` clock domain, driven by a PLL from the board oscillator at the
  requested frequency, with its reset held until lock (:mod:`.pll`);
- the UART resource ``uart`` 0 of amaranth-boards: ``rx`` through a two-stage
  synchronizer into the payload, the payload's ``uart_tx`` to ``tx``;
- a heartbeat LED toggling about once a second from the ``sync`` domain (it
  blinks only when the PLL runs and reset is released) and, where the board
  has a second LED, the payload's ``led_error``.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

from .pll import DEFAULT_TOLERANCE, ECP5PLL, ICE40PLL, ecp5_pll_config, ice40_pll_config


__all__ = ["BoardSpec", "BoardTop"]


_FAMILIES = ("ecp5", "ice40")


@dataclass(frozen=True)
class BoardSpec:
    """What a board top needs to know about a board.

    Parameters
    ----------
    name : str
        Short name (``ulx3s``), used for file names.
    platform : callable
        Returns a fresh amaranth-boards platform instance.
    family : str
        ``"ecp5"`` (EHXPLLL) or ``"ice40"`` (SB_PLL40_PAD on the oscillator pin).
    clock : str
        The oscillator's resource name (``clk25``, ``clk12``).
    clock_mhz : float
        The oscillator frequency.
    heartbeat_led : int
        Index of the ``led`` resource that blinks.
    error_led : int or None
        Index of the ``led`` resource showing the payload's sticky error.
    """
    name: str
    platform: Callable
    family: str
    clock: str
    clock_mhz: float
    heartbeat_led: int
    error_led: Optional[int]

    def __post_init__(self):
        if self.family not in _FAMILIES:
            raise ValueError(f"Unknown FPGA family {self.family!r}; expected one of {_FAMILIES}")

    def pll_config(self, frequency_mhz, *, tolerance=DEFAULT_TOLERANCE):
        """The PLL configuration reaching ``frequency_mhz`` from this board's oscillator."""
        calculator = ecp5_pll_config if self.family == "ecp5" else ice40_pll_config
        return calculator(self.clock_mhz, frequency_mhz, tolerance=tolerance)


class BoardTop(Elaboratable):
    """PLL + reset + UART + LEDs around a payload, for one board.

    Parameters
    ----------
    spec : BoardSpec
        The board.
    payload_factory : callable
        ``payload_factory(clk_frequency=hz)`` returns the payload (see the module
        docstring for its ports).
    frequency_mhz : float
        The requested ``sync`` frequency.
    tolerance : float
        Largest accepted relative distance of the PLL's output from the request.

    Attributes
    ----------
    pll_config : ECP5PLLConfig or ICE40PLLConfig
        Computed at construction, so an unreachable frequency fails at once.
    frequency_mhz : float
        The achieved ``sync`` frequency.
    """

    def __init__(self, spec, payload_factory, *, frequency_mhz, tolerance=DEFAULT_TOLERANCE):
        if not isinstance(spec, BoardSpec):
            raise TypeError(f"Expected a BoardSpec, not {spec!r}")
        if not callable(payload_factory):
            raise TypeError(f"Payload factory must be callable, not {payload_factory!r}")
        self.spec = spec
        try:
            self.pll_config = spec.pll_config(frequency_mhz, tolerance=tolerance)
        except Exception:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._payload_factory = payload_factory

    @property
    def frequency_mhz(self):
        return self.pll_config.f_out

    def _clock(self, m, platform):
        if self.spec.family == "ecp5":
            clk_port = platform.request(self.spec.clock, dir="-")
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
            m.submodules.pll = pll = ECP5PLL(self.pll_config)
            m.d.comb += pll.clk_in.eq(clk_buf.i)
        else:
            # The oscillator pin is the PLL's own pad: no buffer on it (see .pll).
            pad = platform.request(self.spec.clock, dir="-")
            m.submodules.pll = pll = ICE40PLL(self.pll_config, pad=pad)
        return pll

    def elaborate(self, platform):
        if platform is None:
            raise TypeError("A board top needs a platform (an amaranth-boards one)")
        m = Module()
        m.domains.sync = ClockDomain("sync")
        self._clock(m, platform)

        payload = self._payload_factory(clk_frequency=self.pll_config.f_out_hz)
        m.submodules.payload = payload
        modules = getattr(payload, "verilog_modules", None)
        for name, component in (modules() if modules else {}).items():
            platform.add_file(f"{name}.il", rtlil.convert(component, name=name, emit_src=False))

        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.submodules.rx_sync = FFSynchronizer(uart_rx.i, payload.uart_rx, init=1)
        m.d.comb += uart_tx.o.eq(payload.uart_tx)

        # About one toggle per second: the counter's top bit.
        heartbeat = Signal(max(1, round(math.log2(self.pll_config.f_out_hz))))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        m.submodules.led_heartbeat = led = io.Buffer(
            "o", platform.request("led", self.spec.heartbeat_led, dir="-"))
        m.d.comb += led.o.eq(heartbeat[-1])
        if self.spec.error_led is not None:
            m.submodules.led_error = led = io.Buffer(
                "o", platform.request("led", self.spec.error_led, dir="-"))
            m.d.comb += led.o.eq(payload.led_error)
        return m
