"""Two signed 8 x 8 multiply-adds in one iCE40 DSP (``SB_MAC16`` in its 8 x 8 mode)."""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


__all__ = ["MultiplierPair", "MULTIPLIER_PAIR_IMPLEMENTATIONS", "check_implementation"]


#: ``"behavioral"``: Amaranth arithmetic (any target, simulators); ``"sb_mac16"``: one
#: iCE40 ``SB_MAC16`` primitive (Yosys and nextpnr-ice40 only).
MULTIPLIER_PAIR_IMPLEMENTATIONS = ("behavioral", "sb_mac16")


def check_implementation(implementation):
    """Raise ``ValueError`` unless ``implementation`` is a :class:`MultiplierPair` implementation."""
    if implementation not in MULTIPLIER_PAIR_IMPLEMENTATIONS:
        raise ValueError(f"Multiplier pair implementation must be one of "
                         f"{MULTIPLIER_PAIR_IMPLEMENTATIONS}, not {implementation!r}")


class MultiplierPair(wiring.Component):
    """``p[i] = a[i] * b[i] + c[i]`` (mod 2**16) for i = 0, 1, three registered stages deep.

    ``a``, ``b`` are signed 8-bit, ``c`` and ``p`` 16-bit. The three stages are
    the ``SB_MAC16``'s input registers (A, B, C, D), its 8 x 8 product registers
    and its accumulator output registers, all enabled by ``en`` (the DSP's CE).
    Count only cycles with ``en`` high: ``a`` and ``b`` presented in cycle T and
    ``c`` presented in cycle T+1 give ``p`` in T+3 (:attr:`latency`). The addend
    comes one cycle after the factors because it skips the product stage (the
    DSP adds its C/D input register to its product register).

    On the iCE40 UltraPlus the DSP splits into two independent signed 8 x 8
    multipliers: ``a[1] x b[1]`` is the top half (A[15:8] x B[15:8], plus C,
    result on O[31:16]), ``a[0] x b[0]`` the bottom half (A[7:0] x B[7:0], plus
    D, on O[15:0]). So a UP5K's 8 DSPs give 16 multipliers. The ``"behavioral"``
    implementation computes the same in Amaranth, register for register;
    ``tests/test_multiplier_pair.py`` proves the two equivalent with Yosys'
    SAT solver on the ``SB_MAC16`` simulation model of Yosys' iCE40 library.

    Parameters
    ----------
    implementation : str
        One of :data:`MULTIPLIER_PAIR_IMPLEMENTATIONS`.

    Members
    -------
    a, b : In(signed(8)) x 2 (``a_0``, ``a_1``, ``b_0``, ``b_1``)
    c : In(16) x 2 (``c_0``, ``c_1``): the addends
    p : Out(16) x 2 (``p_0``, ``p_1``)
    en : In(1)
    """

    latency = 3

    def __init__(self, implementation="behavioral"):
        try:
            check_implementation(implementation)
        except ValueError:
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._implementation = implementation
        super().__init__({
            **{f"a_{i}": In(signed(8)) for i in range(2)},
            **{f"b_{i}": In(signed(8)) for i in range(2)},
            **{f"c_{i}": In(16) for i in range(2)},
            **{f"p_{i}": Out(16) for i in range(2)},
            "en": In(1),
        })

    @property
    def implementation(self):
        return self._implementation

    def elaborate(self, platform):
        m = Module()
        if self._implementation == "sb_mac16":
            m.submodules.dsp = Instance(
                "SB_MAC16",
                p_MODE_8x8=Const(1, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1),
                # Stage 1: the operand registers.
                p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_C_REG=Const(1, 1),
                p_D_REG=Const(1, 1),
                # Stage 2: the two 8 x 8 product registers (F on top, G at the bottom).
                p_TOP_8x8_MULT_REG=Const(1, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
                p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
                # Stage 3: F + C and G + D into the output registers, which drive O.
                p_TOPADDSUB_LOWERINPUT=Const(1, 2), p_TOPADDSUB_UPPERINPUT=Const(1, 1),
                p_TOPADDSUB_CARRYSELECT=Const(0, 2), p_TOPOUTPUT_SELECT=Const(1, 2),
                p_BOTADDSUB_LOWERINPUT=Const(1, 2), p_BOTADDSUB_UPPERINPUT=Const(1, 1),
                p_BOTADDSUB_CARRYSELECT=Const(0, 2), p_BOTOUTPUT_SELECT=Const(1, 2),
                p_NEG_TRIGGER=Const(0, 1),
                i_CLK=ClockSignal("sync"),
                i_CE=self.en,
                i_A=Cat(self.a_0, self.a_1), i_B=Cat(self.b_0, self.b_1),
                i_C=self.c_1, i_D=self.c_0,
                i_AHOLD=0, i_BHOLD=0, i_CHOLD=0, i_DHOLD=0,
                i_IRSTTOP=0, i_IRSTBOT=0, i_ORSTTOP=0, i_ORSTBOT=0,
                i_OLOADTOP=0, i_OLOADBOT=0, i_ADDSUBTOP=0, i_ADDSUBBOT=0,
                i_OHOLDTOP=0, i_OHOLDBOT=0, i_CI=0, i_ACCUMCI=0, i_SIGNEXTIN=0,
                o_O=Cat(self.p_0, self.p_1),
            )
            return m

        for i in range(2):
            a = Signal(signed(8), name=f"in_a_{i}")
            b = Signal(signed(8), name=f"in_b_{i}")
            c = Signal(16, name=f"in_c_{i}")
            product = Signal(16, name=f"product_{i}")
            with m.If(self.en):
                m.d.sync += [
                    a.eq(getattr(self, f"a_{i}")),
                    b.eq(getattr(self, f"b_{i}")),
                    c.eq(getattr(self, f"c_{i}")),
                    product.eq(a * b),
                    getattr(self, f"p_{i}").eq(product + c),
                ]
        return m
