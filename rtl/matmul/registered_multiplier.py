"""A multiplier with operand and product registers (on an ECP5 ``MULT18X18D``)."""

from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


__all__ = ["RegisteredMultiplier", "REGISTERED_MULTIPLIER_IMPLEMENTATIONS",
           "check_registered_multiplier"]


#: ``"behavioral"``: Amaranth arithmetic (any target, simulators); ``"mult18x18d"``: one
#: ECP5 ``MULT18X18D`` primitive with its input and output registers (Yosys and
#: nextpnr-ecp5 only).
REGISTERED_MULTIPLIER_IMPLEMENTATIONS = ("behavioral", "mult18x18d")


def check_registered_multiplier(implementation):
    """Raise ``ValueError`` unless ``implementation`` is a :class:`RegisteredMultiplier` one."""
    if implementation not in REGISTERED_MULTIPLIER_IMPLEMENTATIONS:
        raise ValueError(f"Registered multiplier implementation must be one of "
                         f"{REGISTERED_MULTIPLIER_IMPLEMENTATIONS}, not {implementation!r}")


class RegisteredMultiplier(wiring.Component):
    """``p = a * b`` (by default signed 9 x 9 -> signed 18), two registered stages deep.

    Stage 1 registers the operands, stage 2 the product; both move only when
    ``en`` is high. Counting only cycles with ``en`` high, ``a`` and ``b``
    presented in cycle T give ``p`` in T+2 (:attr:`latency`).

    Why: a multiplier that Yosys infers on the ECP5 is a ``MULT18X18D`` with no
    registers, so the path from the flip-flops before it to those after it runs
    through the routing into the DSP row, the multiplier and the routing back
    (20 ns on the ULX3S, 15.6 of them routing). With ``"mult18x18d"`` the two
    registers are the DSP's own (``REG_INPUTA/B`` and ``REG_OUTPUT``, clock
    ``CLK0``, enable ``CE0``, the domain's reset on ``RST0``, synchronous like
    Amaranth's): the multiplier is then a path of its own inside the DSP, and each
    routing leg gets a whole cycle.

    The ``"behavioral"`` implementation is the same register for register in
    Amaranth, for simulation. There is no open simulation model of
    ``MULT18X18D`` (Yosys has only its black box), so the primitive's
    configuration is checked in the synthesized netlist
    (``tests/test_synth.py``) and by place and route (``make bench``).

    Parameters
    ----------
    implementation : str
        One of :data:`REGISTERED_MULTIPLIER_IMPLEMENTATIONS`.
    a_width, b_width : int
        The operands' widths, at most 18 each (the DSP's; 9 x 9 for the PEs, unsigned
        12 x 16 for the range check's partial products).
    is_signed : bool
        Signed (two's complement) operands and product, or unsigned ones.

    Members
    -------
    a : In(signed(a_width)) (or unsigned)
    b : In(signed(b_width)) (or unsigned)
    p : Out(signed(a_width + b_width)) (or unsigned)
    en : In(1)
    """

    latency = 2

    def __init__(self, implementation="behavioral", *, a_width=9, b_width=9, is_signed=True):
        try:
            check_registered_multiplier(implementation)
            for name, width in (("a_width", a_width), ("b_width", b_width)):
                if not 1 <= width <= 18:
                    raise ValueError(f"{name} must be 1 to 18 (a MULT18X18D operand), "
                                     f"not {width}")
        except ValueError:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._implementation = implementation
        self._is_signed = bool(is_signed)
        shape = signed if self._is_signed else unsigned
        super().__init__({
            "a": In(shape(a_width)),
            "b": In(shape(b_width)),
            "p": Out(shape(a_width + b_width)),
            "en": In(1),
        })

    @property
    def implementation(self):
        return self._implementation

    def elaborate(self, platform):
        m = Module()
        if self._implementation == "mult18x18d":
            shape = signed if self._is_signed else unsigned
            a = Signal(shape(18))
            b = Signal(shape(18))
            product = Signal(36)
            m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(product[:len(self.p)])]
            # Only the pins in use are connected: C (the ALU's operand) and the control
            # pins of the unused clock, enable and reset lines stay open, as in Yosys' own
            # MULT18X18D mapping; a constant on them is a net nextpnr has to route to
            # every DSP.
            ports = {f"i_A{i}": a[i] for i in range(18)}
            ports.update({f"i_B{i}": b[i] for i in range(18)})
            ports.update({f"o_P{i}": product[i] for i in range(36)})
            m.submodules.dsp = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
                p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
                p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
                p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
                p_CLK0_DIV="ENABLED", p_GSR="DISABLED", p_RESETMODE="SYNC",
                p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
                i_SIGNEDA=Const(self._is_signed, 1), i_SIGNEDB=Const(self._is_signed, 1),
                i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
                i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=ResetSignal("sync"),
                **ports,
            )
            return m

        a = Signal.like(self.a)
        b = Signal.like(self.b)
        with m.If(self.en):
            m.d.sync += [a.eq(self.a), b.eq(self.b), self.p.eq(a * b)]
        return m
