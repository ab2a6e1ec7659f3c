"""Two integer processing elements of one array row sharing a dual 8 x 8 multiplier."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .mode import MatmulMode
from .multiplier_pair import MultiplierPair, check_implementation
from .partial_sum import column_sum_layout, merge_flags
from .pe import ActivationLane, WeightWrite


__all__ = ["ProcessingElementPair"]


class ProcessingElementPair(wiring.Component):
    """PEs (r, 2j) and (r, 2j + 1) of an INT8/UINT8 array, their products from one
    :class:`~.multiplier_pair.MultiplierPair` (one iCE40 ``SB_MAC16``).

    Each half does what an integer :class:`~.pe.ProcessingElement` does
    (``sum_out = sum_in + a * w[bank]``, activations one PE per cycle to the
    right, partial sums one PE per cycle down), with a signed 8 x 8 multiplier:

    - INT8 activation x INT8 weight: the product itself;
    - UINT8 activation ``a`` (0..255): the multiplier sees ``a - 256`` when
      ``a >= 128`` (the same bits read as signed), and the pair's addend puts
      ``256 * w`` back. The exact product (-32,640 .. 32,385) fits the 16-bit
      result, so the wrap-around of the DSP's 16-bit adder is harmless.

    The multiplier is three stages deep (:attr:`product_latency`, against one
    in :class:`~.pe.ProcessingElement`): an activation arriving on ``a_in`` in
    cycle T has its product added to ``sum_in`` of cycle T+3, the result on
    ``sum_out`` in T+4. Every PE of the array has the same delay, so partial
    sums still meet their products; the array's columns are two cycles later.
    The addend is computed from the activation lane's copy in the next PE's
    input register (the cycle after the factors, as the DSP wants it).

    Bubbles (``valid`` low) add nothing, FP8 and invalid modes multiply as
    INT8 (the engine reports them as errors), all flags as in the integer PE.

    Parameters
    ----------
    rows : int
        Rows of the array (sets the column-sum width).
    multiplier : str
        :class:`~.multiplier_pair.MultiplierPair` implementation.

    Members
    -------
    a_in : In(ActivationLane)
    a_out : Out(ActivationLane)
        ``a_in`` two cycles later (it passed both PEs).
    weight_0, weight_1 : In(WeightWrite)
    sum_in_0, sum_in_1 : In(column_sum_layout(rows, False))
    sum_out_0, sum_out_1 : Out(column_sum_layout(rows, False))
    advance : In(1)
    """

    product_latency = MultiplierPair.latency

    def __init__(self, *, rows, multiplier="behavioral"):
        try:
            if not isinstance(rows, int) or rows < 1:
                raise TypeError(f"Row count must be a positive integer, not {rows!r}")
            check_implementation(multiplier)
        except (TypeError, ValueError):
            self._MustUse__silence = True   # never built: no "created but never used" warning
            raise
        self._rows = rows
        self._multiplier = multiplier
        layout = column_sum_layout(rows, False)
        super().__init__({
            "a_in": In(ActivationLane),
            "a_out": Out(ActivationLane),
            **{f"weight_{i}": In(WeightWrite) for i in range(2)},
            **{f"sum_in_{i}": In(layout) for i in range(2)},
            **{f"sum_out_{i}": Out(layout) for i in range(2)},
            "advance": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.multiplier = mul = MultiplierPair(self._multiplier)
        m.d.comb += mul.en.eq(self.advance)

        # The lane entering each half, and the register after it (the next half's input).
        a_mid = Signal(ActivationLane)
        with m.If(self.advance):
            m.d.sync += [a_mid.eq(self.a_in), self.a_out.eq(a_mid)]
        lanes = [(self.a_in, a_mid), (a_mid, self.a_out)]

        for i, (lane, next_lane) in enumerate(lanes):
            weight = getattr(self, f"weight_{i}")
            banks = [Signal(8, name=f"weight_{i}_bank_{b}") for b in range(2)]
            for b, w in enumerate(banks):
                with m.If(weight.enable & (weight.bank == b)):
                    m.d.sync += w.eq(weight.code)

            # The factors now, the UINT8 correction from the same lane one cycle later.
            m.d.comb += [
                getattr(mul, f"a_{i}").eq(lane.code.as_signed()),
                getattr(mul, f"b_{i}").eq(Mux(lane.bank, banks[1], banks[0]).as_signed()),
            ]
            next_weight = Mux(next_lane.bank, banks[1], banks[0])
            unsigned_high = (next_lane.mode == MatmulMode.UINT8) & next_lane.code[7]
            m.d.comb += getattr(mul, f"c_{i}").eq(
                Mux(unsigned_high, Cat(Const(0, 8), next_weight), 0))

            # The lane's valid bit, as deep as the multiplier.
            valid = lane.valid
            for stage in range(self.product_latency):
                delayed = Signal(name=f"valid_{i}_{stage + 1}")
                with m.If(self.advance):
                    m.d.sync += delayed.eq(valid)
                valid = delayed

            sum_in = getattr(self, f"sum_in_{i}")
            sum_out = getattr(self, f"sum_out_{i}")
            product = getattr(mul, f"p_{i}").as_signed()
            term_flags = {"nan": 0, "pos_inf": 0, "neg_inf": 0, "neg_zero": ~valid}
            sum_regs = {name: Signal(field.shape, name=f"sum_{i}_{name}")
                        for name, field in sum_out.shape()}
            m.d.comb += [getattr(sum_out, name).eq(reg) for name, reg in sum_regs.items()]
            with m.If(self.advance):
                m.d.sync += sum_regs["low"].eq(sum_in.low + Mux(valid, product, 0))
                for name, expr in merge_flags(sum_in, term_flags).items():
                    m.d.sync += sum_regs[name].eq(expr)
        return m
