"""PLLs of the board tops: a configuration calculator and the clock domain it drives.

Two families, two calculators that reproduce the open tools' own searches:

- **ECP5** ``EHXPLLL`` (:func:`ecp5_pll_config`), as Project Trellis' ``ecppll``
  computes it: ``f_pfd = f_in / CLKI_DIV`` (3.125..400 MHz),
  ``f_out = f_pfd * CLKFB_DIV`` with the feedback taken from CLKOP,
  ``f_vco = f_out * CLKOP_DIV`` (400..800 MHz). The closest output wins, then the
  VCO closest to 600 MHz. ``CLKOP_CPHASE`` is ecppll's value (half the output
  period in VCO cycles, truncated exactly as ecppll's single-precision arithmetic
  does), so the parameters are identical to ``ecppll -i F_IN -o F_OUT``.
- **iCE40** ``SB_PLL40_PAD`` / ``SB_PLL40_CORE`` (:func:`ice40_pll_config`), as
  IceStorm's ``icepll`` computes it in SIMPLE feedback mode:
  ``f_pfd = f_in / (DIVR + 1)`` (10..133 MHz), ``f_vco = f_pfd * (DIVF + 1)``
  (533..1066 MHz), ``f_out = f_vco / 2**DIVQ`` (DIVQ 1..6, 16..275 MHz); the first
  closest configuration wins; ``FILTER_RANGE`` follows from ``f_pfd``.

Both raise :class:`PLLError` when the request is out of the PLL's range or when
the closest achievable output is further than ``tolerance`` (relative, default
1 %) from it; the message says what is achievable.

:class:`ECP5PLL` and :class:`ICE40PLL` instantiate the primitive and drive a
clock domain (``sync`` by default) from the PLL output. The domain itself is
defined by the parent (``m.domains.sync = ClockDomain()``: Amaranth 0.6 no
longer lets a submodule define a domain its parents use); the component drives
its clock and its reset. The reset is held until the PLL has locked and then
for ``hold_cycles`` more cycles (20 us by default; iCE40 block RAMs read as
zero for a few microseconds after configuration), and is released
synchronously (an asynchronous assert, a two-stage synchronizer). Losing lock
asserts the reset again.

Timing constraint: nextpnr (ECP5 and iCE40) derives the PLL output's frequency
from the oscillator pin's constraint (amaranth-boards' ``Clock`` on the
resource) and the divider parameters ("Derived frequency constraint of 100.0
MHz for net clk"), so no extra constraint is added. (An explicit
``add_clock_constraint`` on the domain's clock names a net that Yosys has
renamed by the time nextpnr looks for it, which only yields a warning.)

On the iCEBreaker the 12 MHz oscillator drives pin 35, the PLL's dedicated pad:
the PLL must then be an ``SB_PLL40_PAD`` whose ``PACKAGEPIN`` is the raw pin
(``platform.request("clk12", dir="-")``), with no ``SB_IO``/``SB_GB_IO`` on it;
driving an ``SB_PLL40_CORE`` from the pin's global buffer is rejected by
nextpnr ("PACKAGEPIN driven by an SB_GB"). :class:`ICE40PLL` takes that port as
``pad``; without one it is an ``SB_PLL40_CORE`` fed from fabric (``clk_in``).
"""

import math
import struct
from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import ClockDomain, ClockSignal, Const, Instance, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out


__all__ = [
    "PLLError", "ECP5PLLConfig", "ICE40PLLConfig", "ecp5_pll_config", "ice40_pll_config",
    "ECP5PLL", "ICE40PLL",
]


#: Default largest relative distance between the requested and the achieved output.
DEFAULT_TOLERANCE = 0.01
#: Default time the domain's reset is held after lock, in seconds.
DEFAULT_HOLD_SECONDS = 20e-6

# ECP5 EHXPLLL ranges (MHz), as ecppll checks them, plus the CLKOP output range.
_ECP5_INPUT = (8, 400)
_ECP5_OUTPUT = (10, 400)
_ECP5_PFD = (3.125, 400)
_ECP5_VCO = (400, 800)
_ECP5_VCO_PREFERRED = 600
_ECP5_CLKI_DIV = range(1, 129)
_ECP5_CLKFB_DIV = range(1, 81)
_ECP5_CLKOP_DIV = range(1, 129)

# iCE40 PLL ranges (MHz), SIMPLE feedback, as icepll checks them.
_ICE40_INPUT = (10, 133)
_ICE40_OUTPUT = (16, 275)
_ICE40_PFD = (10, 133)
_ICE40_VCO = (533, 1066)


class PLLError(ValueError):
    """No PLL configuration reaches the requested frequency closely enough."""


def _mhz(value):
    return float(value)


@dataclass(frozen=True)
class ECP5PLLConfig:
    """An ``EHXPLLL`` configuration (frequencies in MHz)."""
    f_in: float
    requested: float
    f_out: float
    f_pfd: float
    f_vco: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    @property
    def f_out_hz(self):
        return self.f_out * 1e6

    @property
    def error(self):
        """Relative distance of the achieved output from the request."""
        return abs(self.f_out - self.requested) / self.requested


@dataclass(frozen=True)
class ICE40PLLConfig:
    """An ``SB_PLL40_*`` configuration in SIMPLE feedback mode (frequencies in MHz)."""
    f_in: float
    requested: float
    f_out: float
    f_pfd: float
    f_vco: float
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_out_hz(self):
        return self.f_out * 1e6

    @property
    def error(self):
        """Relative distance of the achieved output from the request."""
        return abs(self.f_out - self.requested) / self.requested


def _check_range(what, value, bounds, family):
    low, high = bounds
    if not low <= value <= high:
        raise PLLError(f"{family} PLL {what} must be {float(low):g}..{float(high):g} MHz, "
                       f"not {float(value):g} MHz")


def _check_tolerance(family, f_in, requested, achieved, tolerance):
    if abs(achieved - requested) > tolerance * requested:
        raise PLLError(
            f"No {family} PLL configuration reaches {float(requested):g} MHz from "
            f"{float(f_in):g} MHz within {tolerance:.2%}: the closest is "
            f"{float(achieved):.4f} MHz; request that, or allow a larger tolerance")


def _float32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def _ecppll_search(f_in, f_out):
    """ecppll's search, in its single-precision arithmetic (ties resolve as it does).

    Returns ``(clki_div, clkfb_div, clkop_div, clkop_cphase)`` or None.
    """
    f32 = _float32
    f_in32, f_out32 = f32(f_in), f32(f_out)
    best = None
    best_error, best_vco = math.inf, 0.0
    for clki_div in _ECP5_CLKI_DIV:
        f_pfd = f32(f_in32 / clki_div)
        if not _ECP5_PFD[0] <= f_pfd <= _ECP5_PFD[1]:
            continue
        for clkfb_div in _ECP5_CLKFB_DIV:
            step = f32(f_pfd * clkfb_div)
            low = max(_ECP5_CLKOP_DIV.start, math.ceil(_ECP5_VCO[0] / step) - 1)
            high = min(_ECP5_CLKOP_DIV.stop - 1, math.floor(_ECP5_VCO[1] / step) + 1)
            for clkop_div in range(low, high + 1):
                f_vco = f32(step * clkop_div)
                if not _ECP5_VCO[0] <= f_vco <= _ECP5_VCO[1]:
                    continue
                achieved = f32(f_vco / clkop_div)
                error = abs(f32(achieved - f_out32))
                if error < best_error or (
                        error == best_error and abs(f32(f_vco - _ECP5_VCO_PREFERRED))
                        < abs(f32(best_vco - _ECP5_VCO_PREFERRED))):
                    best_error, best_vco = error, f_vco
                    # Half an output period in VCO cycles (a 180 degree shift, as Lattice's tools do).
                    half_period_s = f32(1 / (achieved * 1e6) * 0.5)
                    cphase = int(half_period_s * (f_vco * 1e6))
                    best = (clki_div, clkfb_div, clkop_div, cphase)
    return best


def ecp5_pll_config(f_in, f_out, *, tolerance=DEFAULT_TOLERANCE):
    """The ``EHXPLLL`` configuration for ``f_out`` MHz from ``f_in`` MHz (as ecppll).

    Parameters
    ----------
    f_in, f_out : float
        Input (oscillator) and requested output frequency, in MHz.
    tolerance : float
        Largest accepted relative distance of the achieved output from ``f_out``.

    Returns
    -------
    ECP5PLLConfig
        Frequencies are the exact ones the dividers give (not ecppll's rounded ones).

    Raises
    ------
    PLLError
        If a frequency is out of range or nothing is within ``tolerance``.
    """
    f_in_q = Fraction(f_in).limit_denominator(10**6)
    f_out_q = Fraction(f_out).limit_denominator(10**6)
    _check_range("input", f_in_q, _ECP5_INPUT, "ECP5")
    _check_range("output", f_out_q, _ECP5_OUTPUT, "ECP5")
    best = _ecppll_search(float(f_in_q), float(f_out_q))
    if best is None:
        raise PLLError(f"No ECP5 PLL configuration exists for {float(f_in_q):g} MHz in")
    clki_div, clkfb_div, clkop_div, cphase = best
    f_pfd = f_in_q / clki_div
    achieved = f_pfd * clkfb_div
    _check_tolerance("ECP5", f_in_q, f_out_q, achieved, tolerance)
    return ECP5PLLConfig(
        f_in=_mhz(f_in_q), requested=_mhz(f_out_q), f_out=_mhz(achieved),
        f_pfd=_mhz(f_pfd), f_vco=_mhz(achieved * clkop_div), clki_div=clki_div,
        clkfb_div=clkfb_div, clkop_div=clkop_div, clkop_cphase=cphase)


def _ice40_filter_range(f_pfd):
    for bound, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if f_pfd < bound:
            return value
    return 6


def ice40_pll_config(f_in, f_out, *, tolerance=DEFAULT_TOLERANCE):
    """The iCE40 PLL configuration for ``f_out`` MHz from ``f_in`` MHz (as icepll).

    SIMPLE feedback mode; valid for ``SB_PLL40_PAD``, ``SB_PLL40_2F_PAD`` and
    ``SB_PLL40_CORE`` alike.

    Parameters
    ----------
    f_in, f_out : float
        Input (oscillator) and requested output frequency, in MHz.
    tolerance : float
        Largest accepted relative distance of the achieved output from ``f_out``.

    Returns
    -------
    ICE40PLLConfig

    Raises
    ------
    PLLError
        If a frequency is out of range or nothing is within ``tolerance``.
    """
    f_in_q = Fraction(f_in).limit_denominator(10**6)
    f_out_q = Fraction(f_out).limit_denominator(10**6)
    _check_range("input", f_in_q, _ICE40_INPUT, "iCE40")
    _check_range("output", f_out_q, _ICE40_OUTPUT, "iCE40")
    best_error, best = None, None
    for divr in range(16):
        f_pfd = f_in_q / (divr + 1)
        if not _ICE40_PFD[0] <= f_pfd <= _ICE40_PFD[1]:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not _ICE40_VCO[0] <= f_vco <= _ICE40_VCO[1]:
                continue
            for divq in range(1, 7):
                achieved = f_vco / 2**divq
                error = abs(achieved - f_out_q)
                if best_error is None or error < best_error:
                    best_error = error
                    best = (divr, divf, divq, f_pfd, f_vco, achieved)
    if best is None:
        raise PLLError(f"No iCE40 PLL configuration exists for {float(f_in_q):g} MHz in")
    divr, divf, divq, f_pfd, f_vco, achieved = best
    _check_tolerance("iCE40", f_in_q, f_out_q, achieved, tolerance)
    return ICE40PLLConfig(
        f_in=_mhz(f_in_q), requested=_mhz(f_out_q), f_out=_mhz(achieved),
        f_pfd=_mhz(f_pfd), f_vco=_mhz(f_vco), divr=divr, divf=divf, divq=divq,
        filter_range=_ice40_filter_range(f_pfd))


def _hold_cycles(config, hold_cycles):
    if hold_cycles is None:
        hold_cycles = math.ceil(DEFAULT_HOLD_SECONDS * config.f_out_hz)
    if not isinstance(hold_cycles, int) or hold_cycles < 1:
        raise TypeError(f"Hold cycle count must be a positive integer, not {hold_cycles!r}")
    return hold_cycles


def _drive_domain(m, *, domain, clk, locked, hold_cycles):
    """Drive ``domain``'s clock with ``clk`` and hold its reset until ``locked`` + ``hold_cycles``.

    A local, asynchronously reset (by ``~locked``) counter in a helper domain counts
    the hold time; its ``ready`` flag releases the domain's reset through a
    :class:`ResetSynchronizer` (asynchronous assert, synchronous release).
    """
    hold = f"{domain}_pll_hold"
    m.domains += ClockDomain(hold, async_reset=True, local=True)
    m.d.comb += [
        ClockSignal(domain).eq(clk),
        ClockSignal(hold).eq(clk),
        ResetSignal(hold).eq(~locked),
    ]
    timer = Signal(range(hold_cycles + 1))
    ready = Signal()
    with m.If(timer == hold_cycles):
        m.d[hold] += ready.eq(1)
    with m.Else():
        m.d[hold] += timer.eq(timer + 1)
    m.submodules.reset_sync = ResetSynchronizer(~ready, domain=domain)


class ECP5PLL(wiring.Component):
    """An ECP5 ``EHXPLLL`` driving clock domain ``domain`` (CLKOP, feedback from CLKOP).

    The parent defines ``domain``; this component drives its clock and reset.

    Parameters
    ----------
    config : ECP5PLLConfig
        From :func:`ecp5_pll_config`.
    domain : str
        The clock domain to drive (default ``sync``).
    hold_cycles : int, optional
        Cycles the domain's reset stays asserted after lock (default: 20 us).

    Members
    -------
    clk_in : In(1)
        The reference clock (the oscillator's input buffer output).
    locked : Out(1)
        The PLL's LOCK output.
    """

    clk_in: In(1)
    locked: Out(1)

    def __init__(self, config, *, domain="sync", hold_cycles=None):
        if not isinstance(config, ECP5PLLConfig):
            raise TypeError(f"Expected an ECP5PLLConfig, not {config!r}")
        self._config = config
        self._domain = domain
        self._hold_cycles = _hold_cycles(config, hold_cycles)
        super().__init__()

    config = property(lambda self: self._config)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        clk_out = Signal(name="clk_out")
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{cfg.f_in:g}",
            a_FREQUENCY_PIN_CLKOP=f"{cfg.f_out:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED",
            p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
            p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=cfg.clki_div,
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=cfg.clkop_div,
            p_CLKOP_CPHASE=cfg.clkop_cphase, p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=cfg.clkfb_div,
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, o_CLKOP=clk_out, i_CLKFB=clk_out,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=self.locked)
        _drive_domain(m, domain=self._domain, clk=clk_out, locked=self.locked,
                      hold_cycles=self._hold_cycles)
        return m


class ICE40PLL(wiring.Component):
    """An iCE40 PLL (SIMPLE feedback) driving clock domain ``domain`` (PLLOUTGLOBAL).

    The parent defines ``domain``; this component drives its clock and reset.
    With ``pad`` it is an ``SB_PLL40_PAD`` whose ``PACKAGEPIN`` is that pin (the
    PLL's dedicated input pad; the pin then has no other buffer); without, an
    ``SB_PLL40_CORE`` fed by ``clk_in`` from fabric or a global buffer.

    Parameters
    ----------
    config : ICE40PLLConfig
        From :func:`ice40_pll_config`.
    pad : amaranth.lib.io.PortLike, optional
        The raw oscillator pin: ``platform.request(name, dir="-")``.
    domain : str
        The clock domain to drive (default ``sync``).
    hold_cycles : int, optional
        Cycles the domain's reset stays asserted after lock (default: 20 us).

    Members
    -------
    clk_in : In(1)
        The reference clock; only without ``pad``.
    locked : Out(1)
        The PLL's LOCK output.
    """

    def __init__(self, config, *, pad=None, domain="sync", hold_cycles=None):
        if not isinstance(config, ICE40PLLConfig):
            raise TypeError(f"Expected an ICE40PLLConfig, not {config!r}")
        self._config = config
        self._pad = pad
        self._domain = domain
        self._hold_cycles = _hold_cycles(config, hold_cycles)
        members = {"locked": Out(1)}
        if pad is None:
            members = {"clk_in": In(1), **members}
        super().__init__(members)

    config = property(lambda self: self._config)

    @property
    def primitive(self):
        """``SB_PLL40_PAD`` with a pad, else ``SB_PLL40_CORE``."""
        return "SB_PLL40_CORE" if self._pad is None else "SB_PLL40_PAD"

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        clk_out = Signal(name="clk_out")
        if self._pad is None:
            reference = {"i_REFERENCECLK": self.clk_in}
        else:
            reference = {"i_PACKAGEPIN": self._pad.io}
        m.submodules.pll = Instance(
            self.primitive,
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=Const(cfg.divr, 4), p_DIVF=Const(cfg.divf, 7), p_DIVQ=Const(cfg.divq, 3),
            p_FILTER_RANGE=Const(cfg.filter_range, 3),
            i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=clk_out, o_LOCK=self.locked,
            **reference)
        _drive_domain(m, domain=self._domain, clk=clk_out, locked=self.locked,
                      hold_cycles=self._hold_cycles)
        return m
