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

**Extended** (``Requantizer(extended=True)``, the core's post-processor uses it): each
transfer also carries ``wide``, a 16-bit zero point and a residual term, for the
all-MiniLM-L6-v2 mapping::

    x   = accumulator + residual * residual_multiplier + bias     exact, 34-bit signed
    ...                                                            as above
    out = clamp(z, -32768, 32767) if wide else clamp(z, -128, 127)

``residual`` is INT8, ``residual_multiplier`` (``d``) UINT16; ``residual * d = 0``
(either 0) is the plain requantizer. Golden models: :func:`sim.golden.int16_ops.requantize_int16`
and :func:`~sim.golden.int16_ops.requantize_residual_int16` (which require
``accumulator + residual * d`` to stay within INT32; the RTL is exact beyond that too).
With ``wide`` 0 and a zero point in [-128, 127] it equals the plain requantizer bit for bit.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["SHIFT_MIN", "SHIFT_MAX", "RequantizerInput", "RequantizerOutput",
           "ExtendedRequantizerInput", "ExtendedRequantizerOutput", "Requantizer"]


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


class ExtendedRequantizerInput(data.Struct):
    """:class:`RequantizerInput` with a 16-bit zero point, the output width and a residual.

    Members
    -------
    accumulator, bias, multiplier, shift
        As :class:`RequantizerInput`.
    zero_point : signed(16)
        Added after rounding, before clamping.
    wide : 1
        Clamp to INT16 ([-32768, 32767]) instead of INT8.
    residual : signed(8)
        An INT8 code; ``residual * residual_multiplier`` is added to the accumulator
        exactly, before the bias.
    residual_multiplier : unsigned(16)
        ``d``: the residual's scale in units of the accumulator's scale.
    """
    accumulator: signed(32)
    bias: signed(32)
    multiplier: unsigned(31)
    shift: signed(6)
    zero_point: signed(16)
    wide: 1
    residual: signed(8)
    residual_multiplier: unsigned(16)


class ExtendedRequantizerOutput(data.Struct):
    """One requantized value, INT8 (sign-extended) or INT16.

    Members
    -------
    value : signed(16)
        ``clamp(z, -128, 127)``, or ``clamp(z, -32768, 32767)`` if ``wide``; 0 if ``error``.
    saturated : 1
        The clamp changed the value (0 if ``error``).
    error : 1
        ``shift`` was out of range (-32 or 31).
    """
    value: signed(16)
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

    With ``extended`` a stage comes first: ``accumulator + bias`` and ``residual *
    residual_multiplier`` (an 8 x 16-bit product) are registered, s0 adds them (34
    bits); the product is then 34 x 31 bits, and s3 limits ``y`` to [-65536, 65536]
    (16-bit zero point) and clamps to INT8 or INT16 by ``wide``.

    Latency :attr:`latency` (4, or 5 ``extended``) cycles from an input transfer to
    ``o.valid``; throughput one element per cycle. Backpressure stalls the whole
    pipeline (``i.ready = ~o.valid | o.ready``).

    Parameters
    ----------
    extended : bool
        Use :class:`ExtendedRequantizerInput` and :class:`ExtendedRequantizerOutput`.

    Members
    -------
    i : In(stream.Signature(RequantizerInput))
        Accumulators with their bias, scale and zero point (and residual, if extended).
    o : Out(stream.Signature(RequantizerOutput))
        INT8 (or INT16, if extended and wide) values with saturation and error flags,
        in order.
    """

    def __init__(self, *, extended=False):
        self._extended = extended
        self.latency = 5 if extended else 4
        super().__init__({
            "i": In(stream.Signature(ExtendedRequantizerInput if extended else RequantizerInput)),
            "o": Out(stream.Signature(ExtendedRequantizerOutput if extended else RequantizerOutput)),
        })

    def elaborate(self, platform):
        m = Module()
        extended = self._extended
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        i = self.i.payload

        # e0 (extended only): the bias sum and the residual product, registered apart so
        # that the 8 x 16-bit product is not in series with the adders.
        if extended:
            x_width = 34  # |acc + bias| <= 2**32, |residual * d| < 2**23
            zp_width = 16
            e1_valid = Signal()
            e1_sum = Signal(signed(33))
            e1_product = Signal(signed(25))
            e1_multiplier = Signal(unsigned(31))
            e1_shift = Signal(signed(6))
            e1_zero_point = Signal(signed(zp_width))
            e1_wide = Signal()
            with m.If(advance):
                m.d.sync += [
                    e1_valid.eq(self.i.valid),
                    e1_sum.eq(i.accumulator + i.bias),
                    e1_product.eq(i.residual * i.residual_multiplier),
                    e1_multiplier.eq(i.multiplier),
                    e1_shift.eq(i.shift),
                    e1_zero_point.eq(i.zero_point),
                    e1_wide.eq(i.wide),
                ]
            s0_valid, s0_sum = e1_valid, e1_sum + e1_product
            s0_multiplier, s0_shift, s0_zero_point, s0_wide = (
                e1_multiplier, e1_shift, e1_zero_point, e1_wide)
        else:
            x_width = 33
            zp_width = 8
            s0_valid, s0_sum = self.i.valid, i.accumulator + i.bias
            s0_multiplier, s0_shift, s0_zero_point, s0_wide = i.multiplier, i.shift, i.zero_point, 0

        # s0: add the bias exactly; turn the TFLite exponent into a right-shift amount.
        s0_x = Signal(signed(x_width))
        s0_error = Signal()
        s0_shift_amount = Signal(unsigned(6))  # t - 1 = 30 - shift, 0..61 when valid
        m.d.comb += [
            s0_x.eq(s0_sum),
            s0_error.eq((s0_shift < SHIFT_MIN) | (s0_shift > SHIFT_MAX)),
            # For the error codes this wraps to 63 or 62: a defined, discarded result.
            s0_shift_amount.eq(SHIFT_MAX - s0_shift),
        ]

        s1_valid = Signal()
        s1_x = Signal(signed(x_width))
        s1_multiplier = Signal(unsigned(31))
        s1_shift_amount = Signal(unsigned(6))
        s1_zero_point = Signal(signed(zp_width))
        s1_error = Signal()
        s1_wide = Signal()
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(s0_valid),
                s1_x.eq(s0_x),
                s1_multiplier.eq(s0_multiplier),
                s1_shift_amount.eq(s0_shift_amount),
                s1_zero_point.eq(s0_zero_point),
                s1_error.eq(s0_error),
            ]
            if extended:
                m.d.sync += s1_wide.eq(s0_wide)

        # s1: the product. |x| <= 2**(x_width - 1) and multiplier < 2**31: exact in
        # signed(x_width + 31) (64 bits plain, 65 extended).
        s2_valid = Signal()
        s2_product = Signal(signed(x_width + 31))
        s2_shift_amount = Signal(unsigned(6))
        s2_zero_point = Signal(signed(zp_width))
        s2_error = Signal()
        s2_wide = Signal()
        with m.If(advance):
            m.d.sync += [
                s2_valid.eq(s1_valid),
                s2_product.eq(s1_x * s1_multiplier),
                s2_shift_amount.eq(s1_shift_amount),
                s2_zero_point.eq(s1_zero_point),
                s2_error.eq(s1_error),
            ]
            if extended:
                m.d.sync += s2_wide.eq(s1_wide)

        # s2: round half up and shift by t. Arithmetic shifts are floors, so
        # floor((floor(p / 2**(t-1)) + 1) / 2) = floor((p + 2**(t-1)) / 2**t).
        s2_truncated = Signal(signed(x_width + 31))
        s2_rounded = Signal(signed(x_width + 30))  # |y| < 2**(x_width + 29) for t >= 1
        m.d.comb += [
            s2_truncated.eq(s2_product >> s2_shift_amount),
            s2_rounded.eq((s2_truncated + 1) >> 1),
        ]

        s3_valid = Signal()
        s3_y = Signal(signed(x_width + 30))
        s3_zero_point = Signal(signed(zp_width))
        s3_error = Signal()
        s3_wide = Signal()
        with m.If(advance):
            m.d.sync += [
                s3_valid.eq(s2_valid),
                s3_y.eq(s2_rounded),
                s3_zero_point.eq(s2_zero_point),
                s3_error.eq(s2_error),
            ]
            if extended:
                m.d.sync += s3_wide.eq(s2_wide)

        # s3: zero point and clamp. For y >= 2 * 2**(zp_width - 1) (<= -2 * ...) every
        # zero point saturates high (low) with either clamp, so y is limited first:
        # [-256, 256] plain (11-bit adder), [-65536, 65536] extended (19-bit).
        limit = 1 << zp_width
        s3_y_limited = Signal(signed(zp_width + 2))
        s3_z = Signal(signed(zp_width + 3))
        s3_value = Signal(signed(16 if extended else 8))
        m.d.comb += [
            s3_y_limited.eq(Mux(s3_y > limit, limit, Mux(s3_y < -limit, -limit, s3_y))),
            s3_z.eq(s3_y_limited + s3_zero_point),
        ]
        if extended:
            high = Mux(s3_wide, (1 << 15) - 1, 127)
            low = Mux(s3_wide, -(1 << 15), -128)
        else:
            high, low = 127, -128
        m.d.comb += s3_value.eq(Mux(s3_z > high, high, Mux(s3_z < low, low, s3_z)))
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
