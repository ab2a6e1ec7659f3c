"""Test inputs for the matmul engine: random codes rich in extreme values,
cancellation cases where only exact accumulation gets the right answer, and the
engine's input streams for a list of passes."""

import numpy as np

from rtl.matmul.engine import matmul_pass_layout
from rtl.matmul.mode import MatmulMode
from rtl.numerics.fp8_format import FORMAT_INFO, FP8Format

from .golden.fp8_codec import encode
from .payload import pack, pack_lanes


__all__ = ["extreme_codes", "random_codes", "cancellation_problems", "encode_passes"]


def extreme_codes(mode, operand):
    """The codes worth hitting for one operand (``"a"`` or ``"w"``) of a mode."""
    if mode == MatmulMode.UINT8 and operand == "a":
        return [0, 1, 127, 128, 254, 255]
    if not mode.is_fp8:
        return [0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF]   # 0, 1, 127, -128, -127, -1
    fmt = mode.activation_format if operand == "a" else mode.weight_format
    info = FORMAT_INFO[fmt]
    top = info.max_magnitude_code
    codes = [0x00, 0x80, 0x01, 0x81, (1 << info.mantissa_bits) - 1,  # zeros, subnormals
             1 << info.mantissa_bits, top, top | 0x80, top - 1]        # min normal, max
    if fmt == FP8Format.E5M2:
        codes += [0x7C, 0xFC, 0x7D, 0xFE]                              # Inf, NaN
    else:
        codes += [0x7F, 0xFF]                                          # NaN
    return codes


def random_codes(rng, shape, mode, operand, extreme_fraction=0.15, special_fraction=0.004):
    """Uniform random codes, a share of them replaced by extreme values.

    NaN and Inf codes are drawn far less often than other extremes, so that most
    results stay finite and some do not.
    """
    codes = rng.integers(0, 256, shape)
    extremes = extreme_codes(mode, operand)
    specials = [c for c in extremes if _is_special(mode, operand, c)]
    ordinary = [c for c in extremes if c not in specials]
    pick = rng.random(shape)
    codes = np.where(pick < extreme_fraction, rng.choice(ordinary, shape), codes)
    if mode.is_fp8:
        # Uniform codes hit NaN/Inf too often; redraw those, then add a few back.
        is_special = np.vectorize(lambda c: _is_special(mode, operand, c))(codes) if codes.size else codes
        codes = np.where(is_special, rng.choice(ordinary, shape), codes)
        if specials:
            codes = np.where(pick > 1 - special_fraction, rng.choice(specials, shape), codes)
    return codes.astype(np.uint8)


def _is_special(mode, operand, code):
    if not mode.is_fp8:
        return False
    fmt = mode.activation_format if operand == "a" else mode.weight_format
    magnitude = int(code) & 0x7F
    if fmt == FP8Format.E4M3:
        return magnitude == 0x7F
    return magnitude >= 0x7C


def _fp8(values, fmt):
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return encode(bits, fmt, saturate=False)


def cancellation_problems():
    """(mode, A, W) products whose exact result survives only exact accumulation.

    Each row of A times the column of W sums huge + tiny - huge (in several
    orders); float32 accumulation in order would lose the tiny term.
    """
    problems = []
    for mode, big, tiny in ((MatmulMode.E4M3, 448.0, 2.0 ** -9),
                            (MatmulMode.E5M2, 57344.0, 2.0 ** -16),
                            (MatmulMode.E4M3_E5M2, 448.0, 2.0 ** -9)):
        af, wf = mode.activation_format, mode.weight_format
        w_tiny = 2.0 ** -9 if wf == FP8Format.E4M3 else 2.0 ** -16
        w_big = 448.0 if wf == FP8Format.E4M3 else 57344.0
        orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (2, 1, 0)]
        a_rows, w_col = [], np.array([w_big, w_tiny, -w_big])
        for order in orders:
            row = np.array([big, tiny, big])
            a_rows.append(row[list(order)])
        a = np.stack(a_rows)
        # Each row of A is permuted, so permute W's rows per problem instead: one problem per order.
        for i, order in enumerate(orders):
            problems.append((mode, _fp8(a[i:i + 1], af), _fp8(w_col[list(order)].reshape(3, 1), wf)))
    return problems


def encode_passes(passes, max_rows):
    """The matmul engine's input streams for ``passes`` (``jalapeno.matmul_tiling.MatmulPass``
    objects): ``cmd`` payloads (for ``max_rows`` accumulator rows), weight rows and A rows,
    as flat integers."""
    commands = pack(matmul_pass_layout(max_rows),
                    {k: np.array([p.command()[k] for p in passes])
                     for k in ("mode", "rows", "accumulate", "emit")}) if passes else []
    weight_rows = pack_lanes(np.concatenate([p.weight_tile for p in passes]), 8) if passes else []
    a_list = [p.a_rows for p in passes if p.m]
    a_rows = pack_lanes(np.concatenate(a_list), 8) if a_list else []
    return commands, weight_rows, a_rows
