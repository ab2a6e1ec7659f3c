"""Processing element, systolic array and result rounder in Amaranth's simulator.

Every check compares the RTL with a Python computation that does not share the
RTL's structure: exact products from :mod:`sim.golden.fp8_multiplier` (itself
checked against ml_dtypes), Python integers for the sums, and
:mod:`sim.golden.matmul` for the FP32 results.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Shape, Value
from amaranth.lib import data
from amaranth.sim import Simulator

from rtl.matmul import partial_sum
from rtl.matmul.array import SystolicArray
from rtl.matmul.fp32_rounding import FP32_CANONICAL_NAN, ResultRounder
from rtl.matmul.mode import MatmulMode
from rtl.matmul.pe import ActivationLane, ProcessingElement, WeightWrite
from rtl.numerics.fp8_format import PRODUCT_MIN_EXPONENT
from sim.golden import fp8_multiplier
from sim.golden import matmul as golden
from sim.matmul_cases import extreme_codes, random_codes


INT_MODES = [MatmulMode.INT8, MatmulMode.UINT8]
ALL_MODES = list(MatmulMode)

# A partial sum as a tuple: its exact value, then its flags.
SUM_FIELDS = ("value", "nan", "pos_inf", "neg_inf", "neg_zero")
IDENTITY = (0, 0, 0, 0, 1)      # the empty sum; also what a bubble adds


# --------------------------------------------------------------------------- helpers

class Fields:
    """Pack and unpack a layout's fields to and from the flat integer of its signal."""

    def __init__(self, layout):
        self.layout = data.Layout.cast(layout)
        self.size = self.layout.size
        self.fields = {name: (f.offset, f.width, Shape.cast(f.shape).signed)
                       for name, f in self.layout}

    def pack(self, **values):
        raw = 0
        for name, value in values.items():
            offset, width, _ = self.fields[name]
            raw |= (int(value) & ((1 << width) - 1)) << offset
        return raw

    def unpack(self, raw, names):
        out = []
        for name in names:
            offset, width, signed = self.fields[name]
            v = (raw >> offset) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            out.append(v)
        return tuple(out)


class SumFields(Fields):
    """A partial-sum layout: flags and an exact value, held either in one ``value``
    field or, in a column sum, as ``high * 2**SPLIT + low`` (``high`` only with FP8)."""

    def __init__(self, layout):
        super().__init__(layout)
        self.split = partial_sum.SPLIT if "high" in self.fields else None
        self.value_field = "value" if "value" in self.fields else "low"

    def _width(self, name):
        return self.fields[name][1]

    def value_bits(self):
        """Magnitude bits of an incoming sum that leave room for a product and more."""
        if self.split is None:
            return self._width(self.value_field) - 3
        return self._width("high") - 3 + self.split

    def pack_sum(self, s, rnd=None):
        value, flags = s[0], dict(zip(SUM_FIELDS[1:], s[1:]))
        if self.split is None:
            return self.pack(**{self.value_field: value}, **flags)
        # Any split of the value is legal; with `rnd`, pick one with a random
        # (possibly negative) low part, so both parts carry information.
        low = value & ((1 << self.split) - 1)
        if rnd is not None:
            k = (1 << (self._width("low") - 3 - self.split)) - 1
            low += rnd.randint(-k, k) << self.split
        return self.pack(low=low, high=(value - low) >> self.split, **flags)

    def unpack_sum(self, raw):
        if self.split is None:
            return self.unpack(raw, (self.value_field,) + SUM_FIELDS[1:])
        low, high, *flags = self.unpack(raw, ("low", "high") + SUM_FIELDS[1:])
        return ((high << self.split) + low, *flags)


LANE = Fields(ActivationLane)
WEIGHT = Fields(WeightWrite)


def lane_bits(code, valid, bank, mode):
    return LANE.pack(code=code, valid=valid, bank=bank, mode=MatmulMode(mode).value)


def s8(code):
    return code - ((code & 0x80) << 1)


def add_sums(x, y):
    return (x[0] + y[0], x[1] | y[1], x[2] | y[2], x[3] | y[3], x[4] & y[4])


class ProductTable:
    """Exact product terms ``(value, nan, pos_inf, neg_inf, neg_zero)`` of code pairs.

    FP8 ``value`` is in units of ``2**PRODUCT_MIN_EXPONENT`` (2**-32). Without the FP8
    datapath (``fp8=False``) every non-UINT8 mode multiplies the codes as int8.
    """

    def __init__(self, fp8):
        self.fp8 = fp8
        self._fp8_fields = {}

    def _fields(self, mode):
        if mode not in self._fp8_fields:
            a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
            p = fp8_multiplier.multiply(a, w, mode.activation_format, mode.weight_format)
            self._fp8_fields[mode] = {k: v.tolist() for k, v in p.items()}
        return self._fp8_fields[mode]

    def term(self, a, w, mode):
        mode = MatmulMode(mode)
        if mode == MatmulMode.UINT8:
            return (a * s8(w), 0, 0, 0, 0)
        if not (mode.is_fp8 and self.fp8):
            return (s8(a) * s8(w), 0, 0, 0, 0)
        p = self._fields(mode)
        sig, exp, sign = p["significand"][a][w], p["exponent"][a][w], p["sign"][a][w]
        nan, inf = p["nan"][a][w], p["inf"][a][w]
        special = nan or inf
        value = 0 if special else sig << (exp - PRODUCT_MIN_EXPONENT)
        return (-value if sign else value, nan, inf & (1 - sign), inf & sign,
                int(not special and sig == 0 and sign == 1))


def fp32_of_sum(s):
    """FP32 bits of an exact FP8-mode column sum, with the engine's special cases."""
    value, nan, pos_inf, neg_inf, neg_zero = s
    if nan or (pos_inf and neg_inf):
        return FP32_CANONICAL_NAN
    if pos_inf:
        return golden.FP32_POS_INF
    if neg_inf:
        return golden.FP32_NEG_INF
    if value == 0:
        return golden.FP32_NEG_ZERO if neg_zero else 0
    return int(golden.exact_to_fp32_bits(value, PRODUCT_MIN_EXPONENT))


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def first_mismatch(got, expected, describe):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return f"{describe(i)}: got {g}, expected {e}"
    return None


# --------------------------------------------------------------------------- processing element

class PECycle:
    """Stimulus of one clock cycle of a PE."""
    __slots__ = ("lane", "sum_in", "weight", "advance")

    def __init__(self, lane, sum_in=IDENTITY, weight=None, advance=1):
        self.lane = lane            # (code, valid, bank, mode)
        self.sum_in = sum_in        # partial-sum tuple
        self.weight = weight        # (code, bank) or None
        self.advance = advance


def pe_model(cycles, products, latency=1):
    """Expected ``(a_out lane bits, sum_out tuple)`` after each cycle's clock edge.

    Registers start at zero (so the ``latency`` product stages hold bubbles); they
    move only when ``advance``; weight writes land at every edge; a product uses the
    weight register named by the lane's bank as it was before the edge, and meets
    the ``sum_in`` of the ``latency``-th advancing cycle after its own.
    """
    weights = [0, 0]
    terms = [IDENTITY] * latency        # the product stages, the oldest last
    a_out, sum_out = 0, (0, 0, 0, 0, 0)
    expected = []
    for cy in cycles:
        if cy.advance:
            code, valid, bank, mode = cy.lane
            sum_out = add_sums(cy.sum_in, terms[-1])
            term = products.term(code, weights[bank], mode) if valid else IDENTITY
            terms = [term] + terms[:-1]
            a_out = lane_bits(*cy.lane)
        if cy.weight is not None:
            weights[cy.weight[1]] = cy.weight[0]
        expected.append((a_out, sum_out))
    return expected


def run_pe(pe, cycles):
    """Drive ``cycles`` into ``pe``; return ``(a_out bits, sum_out tuple)`` after each edge."""
    a_in, a_out = Value.cast(pe.a_in), Value.cast(pe.a_out)
    sum_in, sum_out = Value.cast(pe.sum_in), Value.cast(pe.sum_out)
    weight = Value.cast(pe.weight)
    sums = SumFields(pe.sum_out.shape())
    rnd = random.Random(len(cycles))
    got = []

    async def bench(ctx):
        last = {}

        def put(signal, key, value):
            if last.get(key) != value:
                ctx.set(signal, value)
                last[key] = value

        for cy in cycles:
            put(a_in, "a", lane_bits(*cy.lane))
            put(sum_in, "s", sums.pack_sum(cy.sum_in, rnd))
            w = (0 if cy.weight is None
                 else WEIGHT.pack(code=cy.weight[0], bank=cy.weight[1], enable=1))
            put(weight, "w", w)
            put(pe.advance, "adv", cy.advance)
            await ctx.tick()
            got.append((ctx.get(a_out), ctx.get(sum_out)))

    simulate(pe, bench)
    return [(a, sums.unpack_sum(s)) for a, s in got]


def check_pe(pe, cycles, products):
    got = run_pe(pe, cycles)
    expected = pe_model(cycles, products, pe.product_latency)

    def describe(i):
        prev = [(cycles[j].lane, cycles[j].sum_in) for j in range(max(0, i - 2), i + 1)]
        return f"after edge of cycle {i} (lanes, sum_in of cycles {max(0, i - 2)}..{i}: {prev})"
    error = first_mismatch(got, expected, describe)
    assert error is None, error
    return got


def random_sum_in(rnd, value_bits):
    """A random incoming partial sum: values of every magnitude, flags now and then."""
    if rnd.random() < 0.2:
        value = 0
    else:
        value = rnd.getrandbits(rnd.randint(1, value_bits))
        value = -value if rnd.random() < 0.5 else value
    return (value, int(rnd.random() < 0.05), int(rnd.random() < 0.05),
            int(rnd.random() < 0.05), int(rnd.random() < 0.6))


def pe_sum_value_bits(pe):
    # Room for an incoming sum plus one product without leaving the column width.
    return SumFields(pe.sum_out.shape()).value_bits()


def pe_weight_codes(mode, rng, count=24):
    """Every extreme weight code of the mode, then random ones, ``count`` in all."""
    codes = list(dict.fromkeys(int(c) for c in extreme_codes(mode, "w")))
    others = [c for c in rng.permutation(256).tolist() if c not in codes]
    return (codes + others)[:count]


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "int_only"])
def test_pe_all_activation_codes(fp8):
    """All 256 activation codes x ~24 weight codes (every extreme code) in every mode.

    Each weight is written into the bank the running lanes do not use, so the
    sweep runs back to back, switching banks between weight codes. A few
    bubbles (valid=0, with random codes) must add nothing.
    """
    pe = ProcessingElement(rows=4, fp8=fp8)
    products = ProductTable(fp8)
    rng = np.random.default_rng(1 + fp8)
    rnd = random.Random(2 + fp8)
    value_bits = pe_sum_value_bits(pe)

    blocks = []     # (mode, weight code) in sweep order
    for mode in ALL_MODES:
        # 24 weights for the modes this PE is built for; the FP8 PE's INT modes get 12
        # (the int-only sweep has 24), and without the FP8 datapath the FP8 modes are
        # just INT8 products, so 4 do.
        count = 24 if mode.is_fp8 == fp8 else (12 if fp8 else 4)
        blocks += [(mode, w) for w in pe_weight_codes(mode, rng, count)]

    cycles = [PECycle((0, 0, 0, 0), weight=(blocks[0][1], 0),
                      advance=int(rnd.random() < 0.5))]
    for k, (mode, _) in enumerate(blocks):
        bank = k % 2
        nxt = (blocks[k + 1][1], 1 - bank) if k + 1 < len(blocks) else None
        for i, a in enumerate(rng.permutation(256).tolist()):
            while rnd.random() < 0.03:   # a bubble: random code, valid low
                cycles.append(PECycle((rnd.randrange(256), 0, rnd.randrange(2), mode),
                                      random_sum_in(rnd, value_bits)))
            # The next weight goes into the other bank while this one is in use.
            cycles.append(PECycle((a, 1, bank, mode), random_sum_in(rnd, value_bits),
                                  weight=nxt if i == 0 else None))
    cycles += [PECycle((0, 0, 0, 0)) for _ in range(2)]
    got = check_pe(pe, cycles, products)

    # Not a vacuous sweep: every block's 256 lanes were valid and checked.
    assert sum(1 for cy in cycles if cy.lane[1]) == 256 * len(blocks)
    assert len(got) == len(cycles)


def test_pe_bubble_adds_nothing():
    """valid=0 passes sum_in through unchanged, also a NaN/Inf code and neg_zero."""
    pe = ProcessingElement(rows=4, fp8=True)
    products = ProductTable(True)
    E5M2 = MatmulMode.E5M2
    sum_ins = [(12345, 0, 0, 0, 1), (-7, 0, 1, 0, 0), (0, 0, 0, 0, 1), (1 << 60, 1, 0, 1, 1)]
    cycles = [PECycle((0, 0, 0, E5M2), weight=(0x7C, 0))]      # W bank 0 = +Inf
    for code in (0x7C, 0x7E, 0x00, 0x80):                      # Inf, NaN, +0, -0
        cycles.append(PECycle((code, 0, 0, E5M2)))
    for s in sum_ins:
        cycles.append(PECycle((0x7D, 0, 0, E5M2), s))           # NaN code, invalid
    cycles += [PECycle((0, 0, 0, E5M2)) for _ in range(2)]
    got = check_pe(pe, cycles, products)
    # The lane of cycle i meets sum_in of cycle i + 1; the sum leaves after edge i + 1.
    for j, s in enumerate(sum_ins):
        assert got[5 + j][1] == s
    # ... and the same codes with valid=1 would have changed it (the check can fail):
    assert products.term(0x7D, 0x7C, E5M2)[1] == 1


def test_pe_advance_low_freezes():
    """advance=0 holds a_out and sum_out (and the product stage) whatever the inputs do."""
    pe = ProcessingElement(rows=4, fp8=True)
    products = ProductTable(True)
    rnd = random.Random(5)
    mode = MatmulMode.E4M3
    cycles = [PECycle((0, 0, 0, mode), weight=(0x48, 0))]          # W = 4.0
    cycles.append(PECycle((0x38, 1, 0, mode), (100, 0, 0, 0, 0)))  # 1.0 x W
    cycles.append(PECycle((0x40, 1, 0, mode), (200, 0, 0, 0, 0)))  # 2.0 x W, sum of lane 1
    frozen_from = len(cycles)
    for _ in range(6):   # inputs keep changing while advance is low
        cycles.append(PECycle((rnd.randrange(256), 1, rnd.randrange(2), mode),
                              random_sum_in(rnd, 60), advance=0))
    cycles.append(PECycle((0x30, 1, 0, mode), (300, 0, 0, 0, 0)))  # lane 2's sum uses this
    cycles += [PECycle((0, 0, 0, mode), (400, 0, 0, 0, 0)) for _ in range(2)]
    got = check_pe(pe, cycles, products)
    frozen = got[frozen_from - 1:frozen_from + 6]
    assert all(g == frozen[0] for g in frozen), frozen
    assert frozen[0][0] == lane_bits(0x40, 1, 0, mode)
    w = products.term(0x38, 0x48, mode)[0]
    assert frozen[0][1] == (200 + w, 0, 0, 0, 0)
    # After the freeze, lane 2 (2.0) meets the sum_in of the first advancing cycle.
    assert got[frozen_from + 6][1] == (300 + 2 * w, 0, 0, 0, 0)


def test_pe_weight_banks_independent():
    """Each lane uses the bank its tag names; writes to one bank (also with advance=0)
    never disturb the other, and a write lands at the clock edge (the lane of the
    writing cycle still sees the old value)."""
    pe = ProcessingElement(rows=4, fp8=False)
    products = ProductTable(False)
    INT8 = MatmulMode.INT8
    c = [PECycle((0, 0, 0, INT8), weight=(5, 0), advance=0),       # bank 0 = 5, while frozen
         PECycle((0, 0, 0, INT8), weight=(0xF9, 1), advance=0)]     # bank 1 = -7, while frozen
    lanes = [(3, 0), (3, 1), (2, 0), (2, 1), (1, 0), (1, 1), (4, 0)]
    # Bank 1 becomes 11 in the cycle of lane 3 (a bank-1 lane), bank 0 becomes -2 in
    # the cycle of lane 4 (a bank-0 lane).
    writes = {3: (11, 1), 4: (0xFE, 0)}
    for i, (a, bank) in enumerate(lanes):
        c.append(PECycle((a, 1, bank, INT8), weight=writes.get(i)))
    c += [PECycle((0, 0, 0, INT8)) for _ in range(2)]
    got = check_pe(pe, c, products)
    values = [got[2 + i + 1][1][0] for i in range(len(lanes))]
    assert values == [3 * 5, 3 * -7, 2 * 5, 2 * -7, 1 * 5, 1 * 11, 4 * -2], values


@pytest.mark.parametrize("multiplier", [None, "behavioral"], ids=["inferred", "registered"])
def test_pe_random_advance_and_writes(multiplier):
    """Random advance, random weight writes (also while frozen), random modes per lane.
    With a registered multiplier (operand and product registers, the ECP5 DSP's) every
    product, FP8 side information included, meets the sum of one advancing cycle later."""
    pe = ProcessingElement(rows=4, fp8=True, multiplier=multiplier)
    assert pe.product_latency == (1 if multiplier is None else 2)
    products = ProductTable(True)
    rnd = random.Random(9)
    value_bits = pe_sum_value_bits(pe)
    cycles = []
    for _ in range(3000):
        mode = rnd.choice(ALL_MODES)
        weight = (rnd.randrange(256), rnd.randrange(2)) if rnd.random() < 0.3 else None
        cycles.append(PECycle((rnd.randrange(256), int(rnd.random() < 0.9), rnd.randrange(2), mode),
                              random_sum_in(rnd, value_bits), weight=weight,
                              advance=int(rnd.random() < 0.6)))
    check_pe(pe, cycles, products)


# --------------------------------------------------------------------------- systolic array

class ArrayRun:
    """A stream of activation rows through a :class:`SystolicArray`, with weight tiles.

    Tile ``k`` goes into bank ``k % 2``; its rows (``block`` of them, back to back
    with the next tile's) are tagged with that bank. Tile 0 is written before the
    first row; tile ``k + 1`` is written, one weight row per step, while tile ``k``'s
    rows stream: row ``r`` at step ``start_k + cols - 1 + r``, after the last use of
    the bank by tile ``k - 1`` and before tile ``k + 1``'s first use (``block >=
    max(rows, cols)``). A "step" is a cycle with ``advance`` high; weight writes happen
    in the first cycle of a step, whether it advances or not.
    """

    def __init__(self, rows, cols, tile_modes, block, seed, mixed_modes=True, bubbles=True):
        assert block >= max(rows, cols)
        self.rows, self.cols = rows, cols
        rng = np.random.default_rng(seed)
        rnd = random.Random(seed)
        self.prologue = rows
        self.tiles, self.row_tile, self.row_mode, self.row_valid, self.a = [], [], [], [], []
        self.writes = {}
        for k, mode in enumerate(tile_modes):
            tile = random_codes(rng, (rows, cols), mode, "w").astype(np.int64)
            self.tiles.append(tile)
            first_write = 0 if k == 0 else self.prologue + (k - 1) * block + cols - 1
            for r in range(rows):
                self.writes[first_write + r] = (k % 2, r, [int(x) for x in tile[r]])
            for _ in range(block):
                row_mode = mode
                if mixed_modes and rnd.random() < 0.25:
                    row_mode = rnd.choice(tile_modes)
                self.row_tile.append(k)
                self.row_mode.append(row_mode)
                self.row_valid.append(0 if bubbles and rnd.random() < 0.08 else 1)
                self.a.append([int(x) for x in random_codes(rng, rows, row_mode, "a")])
        self.m = len(self.a)

    def lane(self, step, r, rnd):
        i = step - self.prologue - r
        if 0 <= i < self.m and self.row_valid[i]:
            return lane_bits(self.a[i][r], 1, self.row_tile[i] % 2, self.row_mode[i])
        if 0 <= i < self.m:   # a bubble row still carries its tags
            return lane_bits(rnd.randrange(256), 0, self.row_tile[i] % 2, self.row_mode[i])
        return lane_bits(rnd.randrange(256), 0, rnd.randrange(2), rnd.choice(ALL_MODES))

    def simulate(self, dut, stall, seed):
        """Run the stream with ``advance`` low in a ``stall`` share of cycles.

        Returns a dict ``(row, column) -> sum tuple``; every cycle in which a result
        is visible must show the same value (a frozen pipeline holds it).
        """
        R, C = self.rows, self.cols
        sum_fields = SumFields(dut.sum_layout)
        a_sig, sums_sig = Value.cast(dut.a), Value.cast(dut.sums)
        row_sig = Value.cast(dut.weight_row)
        last_step = self.prologue + self.m + R + C + 1
        rnd = random.Random(seed)
        seen = {}

        async def bench(ctx):
            step = 0
            first_cycle_of_step = True
            while step <= last_step:
                raw = ctx.get(sums_sig)
                for c in range(C):
                    i = step - self.prologue - dut.column_latency(c)
                    if 0 <= i < self.m:
                        field = (raw >> (c * sum_fields.size)) & ((1 << sum_fields.size) - 1)
                        seen.setdefault((i, c), []).append(sum_fields.unpack_sum(field))
                ctx.set(a_sig, sum(self.lane(step, r, rnd) << (r * LANE.size) for r in range(R)))
                write = self.writes.get(step) if first_cycle_of_step else None
                if write is not None:
                    bank, r, codes = write
                    ctx.set(row_sig, sum(code << (8 * c) for c, code in enumerate(codes)))
                    ctx.set(dut.weight_row_index, r)
                    ctx.set(dut.weight_bank, bank)
                    ctx.set(dut.weight_enable, 1)
                else:
                    # Garbage on the write port with enable low must not write.
                    ctx.set(row_sig, rnd.getrandbits(8 * C))
                    ctx.set(dut.weight_row_index, rnd.randrange(R))
                    ctx.set(dut.weight_bank, rnd.randrange(2))
                    ctx.set(dut.weight_enable, 0)
                advance = int(rnd.random() >= stall)
                ctx.set(dut.advance, advance)
                await ctx.tick()
                step += advance
                first_cycle_of_step = bool(advance)

        simulate(dut, bench)
        result = {}
        for key, values in seen.items():
            assert all(v == values[0] for v in values), f"row {key[0]} column {key[1]} changed " \
                f"while frozen: {values}"
            result[key] = values[0]
        assert len(result) == self.m * C
        return result

    def check(self, result, products):
        """Compare every row's column sums with independent exact sums and the golden model."""
        for i in range(self.m):
            k, mode = self.row_tile[i], self.row_mode[i]
            tile = self.tiles[k]
            got = [result[(i, c)] for c in range(self.cols)]
            where = f"row {i} (tile {k}, bank {k % 2}, mode {mode.name}, valid " \
                    f"{self.row_valid[i]}, a={self.a[i]}, w={tile.tolist()})"
            if not self.row_valid[i]:
                assert got == [IDENTITY] * self.cols, f"{where}: bubble row gave {got}"
                continue
            exact = []
            for c in range(self.cols):
                s = IDENTITY
                for r in range(self.rows):
                    s = add_sums(s, products.term(self.a[i][r], int(tile[r, c]), mode))
                exact.append(s)
            assert got == exact, f"{where}: got {got}, expected {exact}"
            ref = golden.matmul(np.array([self.a[i]]), tile, mode)[0]
            if mode.is_fp8:
                bits = [fp32_of_sum(s) for s in got]
                assert bits == [int(x) for x in ref], \
                    f"{where}: FP32 {[hex(b) for b in bits]} != golden {[hex(int(x)) for x in ref]}"
            else:
                assert [s[0] for s in got] == [int(x) for x in ref], f"{where}: golden {ref}"


ARRAY_CASES = [
    pytest.param(2, 3, True, ALL_MODES, {}, id="2x3_fp8"),
    pytest.param(3, 2, True, ALL_MODES, {}, id="3x2_fp8"),
    pytest.param(4, 4, False, INT_MODES * 2, {}, id="4x4_int"),
    pytest.param(3, 4, False, INT_MODES * 2, dict(pe_pairs="behavioral"), id="3x4_int_pe_pairs"),
    pytest.param(3, 2, True, ALL_MODES, dict(pe_multiplier="behavioral"),
                 id="3x2_fp8_registered_multiplier"),
]


@pytest.mark.parametrize("rows,cols,fp8,tile_modes,options", ARRAY_CASES)
def test_array_streams_and_double_buffering(rows, cols, fp8, tile_modes, options):
    """Rows streamed one per step through every mode; tiles alternate banks with no
    bubble between them; the same stream with ``advance`` randomly low (also during
    weight writes) gives the same sums. PE pairs (dual 8 x 8 multipliers, UINT8 through
    the addend) and PEs with registered multipliers give the same sums, later."""
    runs = []
    for stall in (0.0, 0.35):
        dut = SystolicArray(rows=rows, cols=cols, fp8=fp8, **options)
        run = ArrayRun(rows, cols, tile_modes, block=max(rows, cols) + 3, seed=rows * 10 + cols)
        result = run.simulate(dut, stall, seed=17)
        run.check(result, ProductTable(fp8))
        runs.append(result)
    assert runs[0] == runs[1]
    # The stream really switched tiles and banks row to row with no gap.
    assert len(run.tiles) >= 2 and run.row_tile == sorted(run.row_tile)


@pytest.mark.parametrize("options,cols,product_latency", [
    ({}, 3, 1), (dict(pe_pairs="behavioral"), 4, 3), (dict(pe_multiplier="behavioral"), 3, 2)])
def test_array_latency_is_exact(options, cols, product_latency):
    """A lone row in a 2 x 3 array (2 x 4 of PE pairs): column c's sum appears exactly
    column_latency(c) cycles after element 0 entered, not a cycle earlier or later."""
    dut = SystolicArray(rows=2, cols=cols, fp8=False, **options)
    mode = MatmulMode.INT8
    w = [[1, 2, 3, -4][:cols], [10, 20, 30, 40][:cols]]
    a = [5, 7]    # column sums 75, 150, 225 (and 260)
    expected = [a[0] * w[0][c] + a[1] * w[1][c] for c in range(cols)]
    sum_fields = SumFields(dut.sum_layout)
    timeline = []

    async def bench(ctx):
        ctx.set(dut.advance, 1)
        for r in range(2):
            ctx.set(Value.cast(dut.weight_row), sum(x << (8 * c) for c, x in enumerate(w[r])))
            ctx.set(dut.weight_row_index, r)
            ctx.set(dut.weight_enable, 1)
            await ctx.tick()
        ctx.set(dut.weight_enable, 0)
        for t in range(12):   # element 0 enters in cycle 0, element 1 in cycle 1
            lanes = [lane_bits(a[0], 1, 0, mode) if t == 0 else 0,
                     lane_bits(a[1], 1, 0, mode) << LANE.size if t == 1 else 0]
            ctx.set(Value.cast(dut.a), sum(lanes))
            raw = ctx.get(Value.cast(dut.sums))
            timeline.append([sum_fields.unpack_sum(raw >> (c * sum_fields.size))[0]
                             for c in range(cols)])
            await ctx.tick()

    simulate(dut, bench)
    assert dut.column_latency(0) == 2 + product_latency
    for c in range(cols):
        column = [row[c] for row in timeline]
        assert column.index(expected[c]) == dut.column_latency(c), column
        assert column.count(expected[c]) == 1, column


# --------------------------------------------------------------------------- result rounder

def rounder_expected(s, fp8):
    value = s[0]
    if not fp8:
        return value & 0xFFFFFFFF
    return fp32_of_sum(s)


def rounder_cases(seed):
    rnd = random.Random(seed)
    values = []
    for _ in range(2500):   # random magnitudes 1 .. 2**81, both signs
        v = rnd.getrandbits(rnd.randint(1, 81)) | 1 if rnd.random() < 0.1 else \
            rnd.randrange(1, 1 << rnd.randint(1, 81))
        values.append(v if rnd.random() < 0.5 else -v)
    for s in list(range(0, 58, 3)) + [57]:   # 25 + 57 = 82 bits: the widest magnitude
        for base in ((1 << 24) + 1, (1 << 24) + 3, (1 << 25) - 1, (1 << 24) - 1):
            for d in (-1, 0, 1):
                v = (base << s) + d
                if 0 < v < 1 << 82:
                    values += [v, -v]
        for d in (-1, 0, 1):   # ties below 24 significant bits and around a power of two
            v = (1 << (24 + s)) + d
            if 0 < v < 1 << 82:
                values += [v, -v]
    values += [1, -1, (1 << 82) - 1, -((1 << 82) - 1), 1 << 81, -(1 << 81),
               (1 << 24) - 1, 1 << 24, (1 << 24) + 1]
    cases = [((v, 0, 0, 0, int(rnd.random() < 0.3)), 1) for v in values]
    # Special cases, with zero and nonzero values alongside.
    for value in (0, 5, -(1 << 70)):
        for flags in ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 1, 1, 0), (1, 1, 1, 1),
                      (0, 1, 0, 1), (0, 0, 1, 1), (0, 0, 0, 1), (0, 0, 0, 0)):
            cases.append(((value,) + flags, 1))
    # Random flags on random values: specials often next to each other, so that a
    # stage that fails to hold (advance low) mixes one sum's flags into another's.
    for _ in range(400):
        v = rnd.choice([0, rnd.randrange(-(1 << 81), 1 << 81)])
        cases.append(((v,) + tuple(int(rnd.random() < 0.25) for _ in range(4)), 1))
    # Integer mode: the low 32 bits, whatever the flags say.
    for _ in range(300):
        v = rnd.randrange(-(1 << 81), 1 << 81) if rnd.random() < 0.3 else rnd.randrange(-(1 << 31), 1 << 31)
        cases.append(((v, rnd.getrandbits(1), rnd.getrandbits(1), rnd.getrandbits(1),
                       rnd.getrandbits(1)), 0))
    rnd.shuffle(cases)
    return cases


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_result_rounder(stall):
    dut = ResultRounder(83)
    cases = rounder_cases(3)
    fields = SumFields(dut.sum.shape())
    sum_sig = Value.cast(dut.sum)
    rnd = random.Random(4)
    got = []

    async def bench(ctx):
        # Model of the pipeline: results of the inputs taken at advancing edges, in order.
        taken = []
        i = 0
        while len(got) < len(cases):
            advance = 1 if i >= len(cases) else int(rnd.random() >= stall)
            if i < len(cases):
                s, fp8 = cases[i]
                ctx.set(sum_sig, fields.pack_sum(s))
                ctx.set(dut.fp8, fp8)
            ctx.set(dut.advance, advance)
            await ctx.tick()
            if advance:
                taken.append(i)
                i += 1
                # After `latency` advancing edges, the input's result is on `result`.
                if len(taken) >= dut.latency:
                    j = taken[-dut.latency]
                    if j < len(cases):
                        got.append((j, ctx.get(dut.result)))
            elif got:
                assert ctx.get(dut.result) == got[-1][1], "result changed while advance was low"

    simulate(dut, bench)
    assert [j for j, _ in got] == list(range(len(cases)))
    for j, result in got:
        s, fp8 = cases[j]
        expected = rounder_expected(s, fp8)
        assert result == expected, \
            f"sum {s} (fp8={fp8}): got {result:#010x}, expected {expected:#010x}"
