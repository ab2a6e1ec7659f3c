"""FP32 converter lane: an FP32 value times a power of two to E4M3, INT8 or INT16.

One lane of the converter that follows the matmul engine in FP8 mode: the engine's FP32
results go on as E4M3 (the next GEMM) or as INT8 / INT16 (softmax, activation,
LayerNorm). The scale is a power of two only, ``2**shift``, so there is no multiplier:
an adder on the FP32 exponent for E4M3, the shift amount of a fixed-point aligner for
the integers. Golden model: ``sim/golden/fp_convert.py`` (:func:`fp32_to_e4m3`,
:func:`fp32_to_int`), bit for bit.

- **E4M3**: the exponent field moves by ``shift`` (a result below the FP32 normal range
  becomes a signed zero, one above it infinity), then :class:`~.fp8_encoder.FP8Encoder`
  (an instance of it, not a copy) rounds to nearest, ties to even, with subnormals, and
  saturates to +-448; NaN stays NaN (``S.1111.111``).
- **INT8 / INT16**: ``clamp(round_half_even(x * 2**shift))``: the 24-bit significand is
  shifted right by ``150 - exponent - shift`` with a round bit and a sticky bit; NaN gives
  0 with ``nan`` set, +-Inf saturates.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp8_encoder import FP8Encoder
from .fp8_format import FP8Format


__all__ = ["SHIFT_LIMIT", "ConvertTarget", "FP32ConverterInput", "FP32ConverterOutput",
           "FP32Converter"]


#: Largest valid ``|shift|`` (:data:`sim.golden.fp_convert.SHIFT_LIMIT`). Beyond it the
#: shift is clamped to +-64 and ``shift_error`` is set.
SHIFT_LIMIT = 64

# E4M3 saturation: |x| > 464 (= 1.8125 * 2**8, the tie between 448 and 480, which rounds
# to 448) gives +-448. As an FP32 field pair: exponent field > 135, or 135 and a
# fraction above 0.8125 * 2**23.
_E4M3_TIE_EXPONENT = 127 + 8
_E4M3_TIE_FRACTION = 0x680000

# INT: the value is significand * 2**-r with r = 150 - max(exponent field, 1) - shift.
# For r < 8 a normal significand (>= 2**23) leaves a magnitude >= 2**16: saturated for
# INT8 and INT16 alike, so the aligner only handles r = 8 .. 25 (r >= 25 gives 0).
_INT_MIN_RIGHT = 8
_INT_MAX_RIGHT = 25


class ConvertTarget(enum.Enum, shape=2):
    """The output format of one conversion. The unused code 3 behaves as INT8."""
    E4M3 = 0
    INT8 = 1
    INT16 = 2


class FP32ConverterInput(data.Struct):
    """One value to convert.

    Members
    -------
    value : 32
        FP32 bit pattern.
    shift : signed(8)
        ``k``: the value is scaled by ``2**k`` before the conversion; valid from -64 to
        64. Outside that it is clamped to +-64 and ``shift_error`` is set.
    target : ConvertTarget
        E4M3, INT8 or INT16.
    """
    value: 32
    shift: signed(8)
    target: ConvertTarget


class FP32ConverterOutput(data.Struct):
    """One converted value.

    Members
    -------
    code : 16
        E4M3 code in the low 8 bits (upper bits 0); the INT8 value sign-extended to 16
        bits; or the INT16 value (two's complement).
    saturated : 1
        The result was clamped: +-448 for ``|x * 2**k| > 464`` or +-Inf (E4M3); the
        integer clamp changed the rounded value, or +-Inf (INT8 / INT16). 0 for NaN.
    nan : 1
        The input was NaN (E4M3 code ``S.1111.111``; integer value 0).
    shift_error : 1
        ``|shift| > 64``: the result is that of the clamped shift (+-64).
    """
    code: 16
    saturated: 1
    nan: 1
    shift_error: 1


class FP32Converter(wiring.Component):
    """Convert FP32 values scaled by ``2**shift`` to E4M3, INT8 or INT16, one per cycle.

    Bit-exact with :func:`sim.golden.fp_convert.fp32_to_e4m3` and
    :func:`sim.golden.fp_convert.fp32_to_int` (``value``, ``saturated``, ``nan``) for
    ``|shift| <= 64``. A ``shift`` outside -64..64 (the golden model rejects it) is
    clamped to +-64, the conversion runs on the clamped shift, and ``shift_error`` is set.

    Two stages, aligned with the two of the :class:`~.fp8_encoder.FP8Encoder` it contains:

    - s0 (combinational on the input, registered into s1): clamp the shift; for E4M3 add
      it to the exponent field (underflow to a signed zero, overflow to infinity) and hand
      the moved FP32 value to the encoder's stage 0; for the integers work out the
      right-shift amount ``r = 150 - max(exponent, 1) - k`` and whether ``r < 8``
      (saturates); the E4M3 saturation flag (a comparison on the moved exponent).
    - s1: the encoder rounds and packs; the integer aligner shifts the significand right by
      ``r`` (a 17-bit shifter), rounds to nearest even from the round and sticky bits,
      and clamps to [-128, 127] or [-32768, 32767]. The output register holds the integer
      result beside the encoder's, and ``o.payload`` selects by target.

    Backpressure stalls the whole pipeline (``i.ready = ~o.valid | o.ready``, the
    encoder's own rule: the lane's registers advance exactly when the encoder's do).

    Latency :attr:`latency` (2) cycles from an input transfer to ``o.valid``; throughput
    one value per cycle.

    Members
    -------
    i : In(stream.Signature(FP32ConverterInput))
        FP32 values with their shift and target.
    o : Out(stream.Signature(FP32ConverterOutput))
        Codes and flags, in order.
    """

    latency = FP8Encoder.latency

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(FP32ConverterInput)),
            "o": Out(stream.Signature(FP32ConverterOutput)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.encoder = encoder = FP8Encoder()

        # The encoder's advance rule, ~o.valid | o.ready, is the lane's: the sideband
        # registers below use encoder.i.ready as their enable, so they move in lockstep.
        m.d.comb += [
            encoder.o.ready.eq(self.o.ready),
            encoder.i.valid.eq(self.i.valid),
            self.i.ready.eq(encoder.i.ready),
        ]
        advance = encoder.i.ready

        # -- s0 ---------------------------------------------------------------------------
        value = self.i.payload.value
        shift = self.i.payload.shift
        target = self.i.payload.target
        sign = value[31]
        exp_field = value[23:31]
        fraction = value[:23]

        s0_shift_error = Signal()
        s0_k = Signal(signed(8))
        m.d.comb += [
            s0_shift_error.eq((shift > SHIFT_LIMIT) | (shift < -SHIFT_LIMIT)),
            s0_k.eq(Mux(shift > SHIFT_LIMIT, SHIFT_LIMIT, Mux(shift < -SHIFT_LIMIT, -SHIFT_LIMIT, shift))),
        ]
        special = exp_field == 0xFF
        zero_or_subnormal = exp_field == 0
        s0_nan = Signal()
        s0_inf = Signal()
        m.d.comb += [
            s0_nan.eq(special & (fraction != 0)),
            s0_inf.eq(special & (fraction == 0)),
        ]

        # E4M3: move the exponent field by k (-64 .. 319).
        s0_new_exp = Signal(signed(10))
        s0_moved = Signal(32)
        m.d.comb += s0_new_exp.eq(exp_field + s0_k)
        with m.If(special | zero_or_subnormal):
            m.d.comb += s0_moved.eq(value)
        with m.Elif(s0_new_exp <= 0):
            m.d.comb += s0_moved.eq(sign << 31)                      # signed zero
        with m.Elif(s0_new_exp >= 0xFF):
            m.d.comb += s0_moved.eq((sign << 31) | 0x7F800000)       # Inf: saturates
        with m.Else():
            m.d.comb += s0_moved.eq(Const(0, 32) | (sign << 31) | (s0_new_exp[:8] << 23) | fraction)
        m.d.comb += [
            encoder.i.payload.value.eq(s0_moved),
            encoder.i.payload.fp8_format.eq(FP8Format.E4M3),
            encoder.i.payload.saturate.eq(1),
        ]
        s0_e4m3_saturated = Signal()
        m.d.comb += s0_e4m3_saturated.eq(
            s0_inf | (~special & ~zero_or_subnormal &
                      ((s0_new_exp > _E4M3_TIE_EXPONENT) |
                       ((s0_new_exp == _E4M3_TIE_EXPONENT) & (fraction > _E4M3_TIE_FRACTION)))))

        # INT: value = significand * 2**-r, r = 150 - max(exponent field, 1) - k
        # (-168 .. 213).
        s0_right = Signal(signed(10))
        m.d.comb += s0_right.eq(150 - Mux(zero_or_subnormal, 1, exp_field) - s0_k)
        s0_big = Signal()
        s0_align = Signal(unsigned(5))  # min(r, 25) - 8: 0 .. 17 when r >= 8
        m.d.comb += [
            s0_big.eq(s0_right < _INT_MIN_RIGHT),
            s0_align.eq(Mux(s0_right > _INT_MAX_RIGHT, _INT_MAX_RIGHT, s0_right) - _INT_MIN_RIGHT),
        ]

        s1_sign = Signal()
        s1_nan = Signal()
        s1_inf = Signal()
        s1_big = Signal()
        s1_significand = Signal(24)
        s1_align = Signal(unsigned(5))
        s1_e4m3 = Signal()
        s1_wide = Signal()
        s1_e4m3_saturated = Signal()
        s1_shift_error = Signal()
        with m.If(advance):
            m.d.sync += [
                s1_sign.eq(sign),
                s1_nan.eq(s0_nan),
                s1_inf.eq(s0_inf),
                s1_big.eq(s0_big),
                s1_significand.eq(Mux(zero_or_subnormal, fraction, Const(1 << 23, 24) | fraction)),
                s1_align.eq(s0_align),
                s1_e4m3.eq(target == ConvertTarget.E4M3),
                s1_wide.eq(target == ConvertTarget.INT16),
                s1_e4m3_saturated.eq(s0_e4m3_saturated),
                s1_shift_error.eq(s0_shift_error),
            ]

        # -- s1: align, round to nearest even, clamp ----------------------------------------
        # The round bit is bit r - 1 = align + 7 of the significand; the sticky bit the OR
        # of the bits below it: bits 0..6 always, and the low `align` bits of sig[7:].
        high = s1_significand[_INT_MIN_RIGHT - 1:]          # 17 bits
        s1_shifted = Signal(17)
        s1_kept = Signal(16)
        s1_round_bit = Signal()
        s1_sticky = Signal()
        s1_rounded = Signal(17)                             # <= 2**16
        m.d.comb += [
            s1_shifted.eq(high >> s1_align),
            s1_kept.eq(s1_shifted[1:]),
            s1_round_bit.eq(s1_shifted[0]),
            s1_sticky.eq((s1_significand[:_INT_MIN_RIGHT - 1] != 0) |
                         ((high & ((Const(1, 18) << s1_align) - 1)[:17]) != 0)),
            s1_rounded.eq(s1_kept + (s1_round_bit & (s1_sticky | s1_kept[0]))),
        ]
        limit = Mux(s1_wide, 1 << 15, 1 << 7)               # |most negative value|
        s1_over = Signal()
        s1_int = Signal(signed(16))
        m.d.comb += [
            s1_over.eq(s1_inf | s1_big | (s1_rounded > limit - 1 + s1_sign)),
            s1_int.eq(Mux(s1_nan, 0,
                      Mux(s1_over,
                          Mux(s1_sign, -limit, limit - 1),
                          Mux(s1_sign, -s1_rounded, s1_rounded)))),
        ]

        o_e4m3 = Signal()
        o_int = Signal(signed(16))
        o_saturated = Signal()
        o_nan = Signal()
        o_shift_error = Signal()
        with m.If(advance):
            m.d.sync += [
                o_e4m3.eq(s1_e4m3),
                o_int.eq(s1_int),
                o_saturated.eq(~s1_nan & Mux(s1_e4m3, s1_e4m3_saturated, s1_over)),
                o_nan.eq(s1_nan),
                o_shift_error.eq(s1_shift_error),
            ]
        m.d.comb += [
            self.o.valid.eq(encoder.o.valid),
            self.o.payload.code.eq(Mux(o_e4m3, encoder.o.payload, o_int)),
            self.o.payload.saturated.eq(o_saturated),
            self.o.payload.nan.eq(o_nan),
            self.o.payload.shift_error.eq(o_shift_error),
        ]
        return m
