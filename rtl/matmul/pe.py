"""Processing element of the weight-stationary systolic array."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..numerics.fp8_decoder import decode_fp8
from ..numerics.fp8_format import FP8Format, PRODUCT_MIN_EXPONENT
from .mode import MatmulMode
from .partial_sum import SPLIT, column_sum_layout, merge_flags
from .registered_multiplier import RegisteredMultiplier, check_registered_multiplier


__all__ = ["ActivationLane", "WeightWrite", "ProcessingElement"]


class ActivationLane(data.Struct):
    """One activation travelling right along a row, with the tags it needs.

    ``bank`` selects which of the PE's two weight registers it meets (double
    buffering: the tag travels with the data, so a tile switch sweeps through the
    skewed array exactly like the data does).
    """
    code: 8
    valid: 1
    bank: 1
    mode: MatmulMode


class WeightWrite(data.Struct):
    """A write of one weight code into one of a PE's two weight registers."""
    code: 8
    bank: 1
    enable: 1


class ProcessingElement(wiring.Component):
    """A multiply-accumulate cell: ``sum_out = sum_in + a * w[bank]``.

    Every mode goes through one 9 x 9 signed multiplier (an INT8 or UINT8
    activation times an INT8 weight, or two FP8 significands), so a PE needs a
    single DSP (MULT18X18D on ECP5, SB_MAC16 on iCE40). In the FP8 modes the
    significand product is then shifted to its exact place (exponent + 32) in the
    fixed-point column sum and negated if negative; NaN, Inf and -0 products set
    the flags of :mod:`.partial_sum`.

    Timing: an activation arriving on ``a_in`` in cycle T leaves on ``a_out`` in
    T+1; its product is registered in T+1 (``s1_``) and added to ``sum_in`` of
    cycle T+1, the result on ``sum_out`` in T+2. So the partial sum of the PE
    above (which saw the activation one cycle earlier) arrives just in time:
    one cycle per hop both ways. Every register moves only when ``advance`` is
    high (the engine's global pipeline enable); weight writes do not wait for it.

    With ``multiplier`` the product comes from a
    :class:`~.registered_multiplier.RegisteredMultiplier` (its operands
    registered too): one cycle later, T+2 (:attr:`product_latency`), the result
    on ``sum_out`` in T+3. Every PE of the array has the same delay, so partial
    sums still meet their products; the array's columns are one cycle later.

    Parameters
    ----------
    rows : int
        Rows of the array this PE is in (sets the column-sum width).
    fp8 : bool
        Build the FP8 datapath; without it, FP8 modes multiply as integers and
        the engine reports them as errors.
    multiplier : str, optional
        A :class:`~.registered_multiplier.RegisteredMultiplier` implementation
        (``"behavioral"`` or ``"mult18x18d"``); by default the product of an
        inferred multiplier is registered once.

    Members
    -------
    a_in : In(ActivationLane)
    a_out : Out(ActivationLane)
        ``a_in`` one cycle later, for the PE to the right.
    weight : In(WeightWrite)
    sum_in : In(column_sum_layout(rows, fp8))
    sum_out : Out(column_sum_layout(rows, fp8))
    advance : In(1)
    """

    def __init__(self, *, rows, fp8=True, multiplier=None):
        try:
            if not isinstance(rows, int) or rows < 1:
                raise TypeError(f"Row count must be a positive integer, not {rows!r}")
            if multiplier is not None:
                check_registered_multiplier(multiplier)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._rows = rows
        self._fp8 = bool(fp8)
        self._multiplier = multiplier
        layout = column_sum_layout(rows, fp8)
        super().__init__({
            "a_in": In(ActivationLane),
            "a_out": Out(ActivationLane),
            "weight": In(WeightWrite),
            "sum_in": In(layout),
            "sum_out": Out(layout),
            "advance": In(1),
        })

    @property
    def fp8(self):
        return self._fp8

    @property
    def product_latency(self):
        """Cycles from an activation on ``a_in`` to its product entering the column sum."""
        return 1 if self._multiplier is None else RegisteredMultiplier.latency

    def elaborate(self, platform):
        m = Module()
        a = self.a_in

        weights = [Signal(8, name=f"weight_{b}") for b in range(2)]
        for b, w in enumerate(weights):
            with m.If(self.weight.enable & (self.weight.bank == b)):
                m.d.sync += w.eq(self.weight.code)
        w_code = Mux(a.bank, weights[1], weights[0])

        with m.If(self.advance):
            m.d.sync += self.a_out.eq(a)

        # Stage 0 -> 1: the multiplier operands, the product register (with a registered
        # multiplier, stage 1 is its operand registers and its product arrives a cycle later;
        # the rest of stage 0's results wait as long in registers of their own).
        latency = self.product_latency

        def delayed(value, name):
            for stage in range(latency):
                register = Signal.like(value, name=name if stage == latency - 1 else f"{name}_{stage}")
                with m.If(self.advance):
                    m.d.sync += register.eq(value)
                value = register
            return value

        is_fp8 = Signal()
        m.d.comb += is_fp8.eq(a.mode.as_value() >= MatmulMode.E4M3.value)
        int_a = Signal(signed(9))
        int_w = Signal(signed(9))
        m.d.comb += [
            int_a.eq(Mux(a.mode == MatmulMode.UINT8, Cat(a.code, Const(0, 1)).as_signed(),
                         a.code.as_signed())),
            int_w.eq(w_code.as_signed()),
        ]
        mul_a = Signal(signed(9))
        mul_w = Signal(signed(9))

        if self._fp8:
            a_format = Mux((a.mode == MatmulMode.E5M2) | (a.mode == MatmulMode.E5M2_E4M3),
                           FP8Format.E5M2, FP8Format.E4M3)
            w_format = Mux((a.mode == MatmulMode.E5M2) | (a.mode == MatmulMode.E4M3_E5M2),
                           FP8Format.E5M2, FP8Format.E4M3)
            x = decode_fp8(m, a.code, a_format, "a_decoded")
            y = decode_fp8(m, w_code, w_format, "w_decoded")
            x_zero = (x.significand == 0) & ~x.nan & ~x.inf
            y_zero = (y.significand == 0) & ~y.nan & ~y.inf
            nan = x.nan | y.nan | (x.inf & y_zero) | (y.inf & x_zero)
            inf = (x.inf | y.inf) & ~nan
            m.d.comb += [
                mul_a.eq(Mux(is_fp8, x.significand, int_a)),
                mul_w.eq(Mux(is_fp8, y.significand, int_w)),
            ]
            s0_shift = Signal(range(64))
            m.d.comb += s0_shift.eq(x.exponent + y.exponent - PRODUCT_MIN_EXPONENT)
            s1_shift = delayed(s0_shift, "s1_shift")
            s1_sign = delayed(x.sign ^ y.sign, "s1_sign")
            s1_nan = delayed(nan, "s1_nan")
            s1_inf = delayed(inf, "s1_inf")
            s1_zero = delayed((x_zero | y_zero) & ~nan, "s1_zero")
        else:
            m.d.comb += [mul_a.eq(int_a), mul_w.eq(int_w)]

        s1_valid = delayed(a.valid, "s1_valid")
        s1_fp8 = delayed(is_fp8, "s1_fp8")
        s1_product = Signal(signed(18))
        if self._multiplier is None:
            with m.If(self.advance):
                m.d.sync += s1_product.eq(mul_a * mul_w)
        else:
            m.submodules.multiplier = multiplier = RegisteredMultiplier(self._multiplier)
            m.d.comb += [
                multiplier.a.eq(mul_a),
                multiplier.b.eq(mul_w),
                multiplier.en.eq(self.advance),
                s1_product.eq(multiplier.p),
            ]

        # Stage 1 -> 2: place the product in the column sum (low or high part) and add.
        # The terms are as wide as their values (the adders below sign-extend them): a
        # sign extension in a plain assignment becomes a concatenation of copies of the
        # sign bit in the Verilog, which Verilator evaluates bit by bit.
        if self._fp8:
            low_magnitude = Signal(unsigned(8 + SPLIT - 1))
            high_magnitude = Signal(unsigned(8 + 58 - SPLIT))
            s1_low = Signal(signed(max(len(low_magnitude) + 1, len(s1_product))), name="s1_low")
            s1_high = Signal(signed(len(high_magnitude) + 1), name="s1_high")
        else:
            s1_low = Signal.like(s1_product, name="s1_low")
            s1_high = None
        s1_flags = {name: Signal(name=f"s1_term_{name}") for name in ("nan", "pos_inf", "neg_inf", "neg_zero")}
        m.d.comb += s1_low.eq(s1_product)
        if self._fp8:
            significand = s1_product.as_unsigned()[:8]
            m.d.comb += [
                low_magnitude.eq(significand << s1_shift[:5]),
                high_magnitude.eq(significand << (s1_shift - SPLIT)[:5]),
            ]
            in_high = s1_shift >= SPLIT
            with m.If(s1_fp8):
                m.d.comb += [
                    s1_low.eq(Mux(in_high, 0, Mux(s1_sign, -low_magnitude, low_magnitude))),
                    s1_high.eq(Mux(in_high, Mux(s1_sign, -high_magnitude, high_magnitude), 0)),
                    s1_flags["nan"].eq(s1_nan),
                    s1_flags["pos_inf"].eq(s1_inf & ~s1_sign),
                    s1_flags["neg_inf"].eq(s1_inf & s1_sign),
                    s1_flags["neg_zero"].eq(s1_zero & s1_sign),
                ]
        # An invalid lane (a bubble) adds nothing: zero and neg_zero kept.
        term_flags = {name: s1_valid & flag for name, flag in s1_flags.items()}
        term_flags["neg_zero"] = ~s1_valid | s1_flags["neg_zero"]
        # One register per field of the column sum, put together on ``sum_out``: the same
        # flip-flops as one struct register, but a Verilator model of a register wider than
        # 64 bits computes each field's adder once for every 32-bit word the field touches.
        sum_regs = {name: Signal(field.shape, name=f"sum_{name}") for name, field in self.sum_out.shape()}
        m.d.comb += [getattr(self.sum_out, name).eq(reg) for name, reg in sum_regs.items()]
        with m.If(self.advance):
            m.d.sync += sum_regs["low"].eq(self.sum_in.low + Mux(s1_valid, s1_low, 0))
            if self._fp8:
                m.d.sync += sum_regs["high"].eq(self.sum_in.high + Mux(s1_valid, s1_high, 0))
            for name, expr in merge_flags(self.sum_in, term_flags).items():
                m.d.sync += sum_regs[name].eq(expr)
        return m
