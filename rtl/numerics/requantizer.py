"""INT8 requantizer: an INT32 accumulator to an INT8 value by a fixed-point scale.

The TFLite/gemmlowp convention with TFLite's single-rounding path
(``TFLITE_SINGLE_ROUNDING``). Per element::

    x   = accumulator + bias                      exact, 33-bit signed
    t   = 31 - shift                              1 .. 62
    y   = (x * multiplier + 2**(t - 1)) >> t      exact, arithmetic shift (floor)
    z   = y + zero_point
    out = clamp(z, -128, 127)                     saturated = (z != out)

so ``y`` is ``x * multiplier * 2**(shift - 31)`` rounded to the nearest integer,
ties toward +infinity (round half up), with one rounding only. Nothing wraps:
every intermediate is held in a register wide enough for its exact value.

``multiplier`` is a Q31 fixed-point number (the real multiplier is
``multiplier * 2**-31``; TFLite's ``QuantizeMultiplier``, mirrored by
:func:`sim.golden.requantizer.quantize_multiplier`, yields values in
``[2**30, 2**31)`` or 0, but every 31-bit value is computed exactly), and ``shift``
is TFLite's exponent: the real scale is ``multiplier * 2**(shift - 31)``, valid
from :data:`SHIFT_MIN` (-31) to :data:`SHIFT_MAX` (30); negative shifts divide.

Per-output-channel scales are supported by carrying them in the payload: every
element comes with its own channel's ``multiplier`` and ``shift`` (and bias and
zero point), so the unit itself holds no table; the tile engine that feeds it
looks the channel's parameters up.

Golden model: ``sim/golden/requantizer.py``.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["SHIFT_MIN", "SHIFT_MAX", "RequantizerInput", "RequantizerOutput", "Requantizer"]


#: The valid range of ``shift``. The other two codes of its ``signed(6)`` field,
#: -32 and 31, are errors.
SHIFT_MIN = -31
SHIFT_MAX = 30


class RequantizerInput(data.Struct):
    """One accumulator and the parameters that requantize it.

    Members
    -------
    accumulator : signed(32)
        The INT32 sum of products.
    bias : signed(32)
        Added to the accumulator exactly (the sum may exceed INT32).
    multiplier : unsigned(31)
        Q31 fixed-point multiplier: the real multiplier is ``multiplier * 2**-31``.
    shift : signed(6)
        TFLite exponent: the real scale is ``multiplier * 2**(shift - 31)``; valid
        from -31 to 30, and -32 or 31 give an error output.
    zero_point : signed(8)
        Added after rounding, before clamping.
    """
    accumulator: signed(32)
    bias: signed(32)
    multiplier: unsigned(31)
    shift: signed(6)
    zero_point: signed(8)


class RequantizerOutput(data.Struct):
    """One requantized value.

    Members
    -------
    value : signed(8)
        ``clamp(z, -128, 127)``; 0 if ``error``.
    saturated : 1
        The clamp changed the value (0 if ``error``).
    error : 1
        ``shift`` was out of range (-32 or 31).
    """
    value: signed(8)
    saturated: 1
    error: 1


class Requantizer(wiring.Component):
    """INT8 requantization of INT32 accumulators, one element per cycle.

    Computes the function in this module's docstring, bit-exact with
    :func:`sim.golden.requantizer.requantize`. Four registered stages:

    - s0: ``x = accumulator + bias`` (33 bits), ``t - 1 = 30 - shift``, shift check;
    - s1: ``x * multiplier``, a plain 33 x 31-bit signed-by-unsigned product in a
      stage of its own (registered operands and result), so that it can map to DSPs;
      exact in 64 bits;
    - s2: round and shift: ``((product >> (t - 1)) + 1) >> 1``, which equals
      ``(product + 2**(t - 1)) >> t`` without a 2**61 addend overflowing 64 bits;
    - s3: add ``zero_point`` and clamp to [-128, 127]. ``y`` is first limited to
      [-256, 256], which leaves ``value`` and ``saturated`` unchanged for every zero
      point, so the adder and comparators are 11 bits wide instead of 64.

    A ``shift`` of -32 or 31 (outside -31..30) gives ``value`` 0, ``saturated`` 0,
    ``error`` 1; the datapath still runs on a defined shift amount, its result is
    discarded.

    Latency :attr:`latency` (4) cycles from an input transfer to ``o.valid``;
    throughput one element per cycle. Backpressure stalls the whole pipeline
    (``i.ready = ~o.valid | o.ready``).

    Members
    -------
    i : In(stream.Signature(RequantizerInput))
        Accumulators with their bias, scale and zero point.
    o : Out(stream.Signature(RequantizerOutput))
        INT8 values with saturation and error flags, in order.
    """

    latency = 4

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(RequantizerInput)),
            "o": Out(stream.Signature(RequantizerOutput)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)

        # s0: add the bias exactly; turn the TFLite exponent into a right-shift amount.
        s0 = self.i.payload
        s0_x = Signal(signed(33))
        s0_error = Signal()
        s0_shift_amount = Signal(unsigned(6))  # t - 1 = 30 - shift, 0..61 when valid
        m.d.comb += [
            s0_x.eq(s0.accumulator + s0.bias),
            s0_error.eq((s0.shift < SHIFT_MIN) | (s0.shift > SHIFT_MAX)),
            # For the error codes this wraps to 63 or 62: a defined, discarded result.
            s0_shift_amount.eq(SHIFT_MAX - s0.shift),
        ]

        s1_valid = Signal()
        s1_x = Signal(signed(33))
        s1_multiplier = Signal(unsigned(31))
        s1_shift_amount = Signal(unsigned(6))
        s1_zero_point = Signal(signed(8))
        s1_error = Signal()
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                s1_x.eq(s0_x),
                s1_multiplier.eq(s0.multiplier),
                s1_shift_amount.eq(s0_shift_amount),
                s1_zero_point.eq(s0.zero_point),
                s1_error.eq(s0_error),
            ]

        # s1: the product. |x| <= 2**32 and multiplier < 2**31, so it fits signed(64).
        s2_valid = Signal()
        s2_product = Signal(signed(64))
        s2_shift_amount = Signal(unsigned(6))
        s2_zero_point = Signal(signed(8))
        s2_error = Signal()
        with m.If(advance):
            m.d.sync += [
                s2_valid.eq(s1_valid),
                s2_product.eq(s1_x * s1_multiplier),
                s2_shift_amount.eq(s1_shift_amount),
                s2_zero_point.eq(s1_zero_point),
                s2_error.eq(s1_error),
            ]

        # s2: round half up and shift by t. Arithmetic shifts are floors, so
        # floor((floor(p / 2**(t-1)) + 1) / 2) = floor((p + 2**(t-1)) / 2**t).
        s2_truncated = Signal(signed(64))
        s2_rounded = Signal(signed(63))  # |y| <= 2**62 - 1 for t >= 1
        m.d.comb += [
            s2_truncated.eq(s2_product >> s2_shift_amount),
            s2_rounded.eq((s2_truncated + 1) >> 1),
        ]

        s3_valid = Signal()
        s3_y = Signal(signed(63))
        s3_zero_point = Signal(signed(8))
        s3_error = Signal()
        with m.If(advance):
            m.d.sync += [
                s3_valid.eq(s2_valid),
                s3_y.eq(s2_rounded),
                s3_zero_point.eq(s2_zero_point),
                s3_error.eq(s2_error),
            ]

        # s3: zero point and clamp. For y >= 256 (<= -256) every zero point in
        # [-128, 127] saturates high (low), so y is limited to [-256, 256] first.
        s3_y_limited = Signal(signed(10))
        s3_z = Signal(signed(11))
        s3_value = Signal(signed(8))
        m.d.comb += [
            s3_y_limited.eq(Mux(s3_y > 256, 256, Mux(s3_y < -256, -256, s3_y))),
            s3_z.eq(s3_y_limited + s3_zero_point),
            s3_value.eq(Mux(s3_z > 127, 127, Mux(s3_z < -128, -128, s3_z))),
        ]
        with m.If(advance):
            m.d.sync += self.o.valid.eq(s3_valid)
            with m.If(s3_error):
                m.d.sync += [
                    self.o.payload.value.eq(0),
                    self.o.payload.saturated.eq(0),
                    self.o.payload.error.eq(1),
                ]
            with m.Else():
                m.d.sync += [
                    self.o.payload.value.eq(s3_value),
                    self.o.payload.saturated.eq(s3_z != s3_value),
                    self.o.payload.error.eq(0),
                ]
        return m
