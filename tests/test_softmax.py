# amaranth: UnusedElaboratable=no
# (test_rejects_bad_parameters leaves half-constructed units that are never elaborated)
"""Softmax unit: golden vs float64, golden edge cases, RTL vs golden in Amaranth's
simulator and on Verilator.

The stimulus (``edge_rows``, ``random_rows``, ``error_rows``) and the expected outputs
(``expected_outputs``, from the golden model) live in ``sim/softmax_metrics.py``,
shared with the cocotb bench ``tests/benches/tb_softmax.py``.
"""

import random

import numpy as np
import pytest
from amaranth.hdl import Fragment, Value
from amaranth.sim import Simulator

from rtl.softmax import Softmax
from sim.cocotb_runner import run_cocotb
from sim.golden import softmax as golden
from sim import softmax_metrics as cases
from sim.pysim import send_stream


# -- golden vs float64 ---------------------------------------------------------------------------

def test_golden_within_bound_of_float64_on_100k_random_rows():
    """Max |golden - float64| <= 1.5/256 over 100,000 random rows of random lengths, masks and scales."""
    worst, rows = cases.golden_error(rows=100_000, seed=1)
    print(f"softmax golden vs float64: max abs error {worst * 256:.4f}/256 over {rows} rows")
    assert rows >= 100_000
    assert worst <= 1.5 / 256


def test_exp_table():
    table = golden.exp_table(0.1)
    assert table.shape == (256,) and table[0] == golden.EXP_ONE
    assert np.all(np.diff(table) <= 0)
    assert table[10] == int(np.floor(np.exp(-1.0) * 32768 + 0.5))
    assert golden.exp_table(0.0).tolist() == [32768] * 256
    with pytest.raises(ValueError):
        golden.exp_table(-1.0)
    with pytest.raises(ValueError):
        golden.exp_table(float("nan"))


def _one(scores, length=None, causal=False, row=0, offset=0, table=None, scale=0.05):
    scores = np.asarray(scores)[None, :]
    length = scores.shape[1] if length is None else length
    table = golden.exp_table(scale) if table is None else table
    return golden.softmax(scores, [length], [causal], [row], [offset], table)[0]


def _reference(scores, length=None, causal=False, row=0, offset=0, scale=0.05):
    scores = np.asarray(scores)[None, :]
    length = scores.shape[1] if length is None else length
    return golden.reference_softmax(scores, scale, [length], [causal], [row], [offset])[0]


def test_golden_length_one_is_clamped_one():
    for x in (-128, 0, 127):
        assert _one([x]).tolist() == [255]        # 1.0 clamps to 255/256


def test_golden_constant_rows_are_uniform():
    for n in (1, 2, 3, 7, 100, 512):
        p = _one(np.full(n, 17))
        assert np.all(p == p[0])
        assert abs(int(p[0]) - 256 / n) <= 0.5 or n == 1


def test_golden_dominant_element():
    x = np.full(512, -128)
    x[77] = 127
    p = _one(x, scale=0.1)                        # exp(-25.5) * 32768 rounds to 0
    assert p[77] == 255 and p.sum() == 255
    x = np.full(64, 0)
    x[3] = 40
    p = _one(x, scale=0.1)
    assert np.abs(p / 256 - _reference(x, scale=0.1)).max() <= 1.5 / 256


def test_golden_very_negative_rows():
    x = np.full(300, -128)
    x[5] = -127
    p = _one(x, scale=0.02)
    assert np.abs(p / 256 - _reference(x, scale=0.02)).max() <= 1.5 / 256
    assert _one(np.full(256, -128)).tolist() == _one(np.full(256, 127)).tolist()


def test_golden_masks():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, 40)
    # padding: elements past length are 0 and the rest is the softmax of the prefix
    p = _one(x, length=13)
    assert not p[13:].any()
    assert p[:13].tolist() == _one(x[:13]).tolist()
    # causal: row 5, offset 2 -> elements 0..7 take part
    p = _one(x, causal=True, row=5, offset=2)
    assert not p[8:].any() and p[:8].tolist() == _one(x[:8]).tolist()
    # causal limit beyond the length: the length wins
    assert _one(x, length=6, causal=True, row=30, offset=0).tolist() == _one(x, length=6).tolist()
    # fully masked: by length 0, by a negative causal limit
    assert not _one(x, length=0).any()
    assert not _one(x, causal=True, row=0, offset=-1).any()
    assert not _one(x, causal=True, row=3, offset=-100).any()
    assert not golden.reference_softmax(x[None], 0.1, [0], [0], [0], [0]).any()


def test_golden_zero_table_gives_zeros():
    assert not _one(np.arange(10), table=np.zeros(256, dtype=np.int64)).any()


def test_golden_row_errors():
    assert golden.row_errors([0, 1, 512, 513, 5, 5], [0, 1, 512, 0, 6, 5], 512).tolist() == [
        True, False, False, True, True, False]


def test_golden_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        golden.softmax(np.zeros(3), [3], [0], [0], [0], golden.exp_table(0.1))
    with pytest.raises(ValueError, match="INT8"):
        golden.softmax(np.full((1, 3), 200), [3], [0], [0], [0], golden.exp_table(0.1))
    with pytest.raises(ValueError, match="table"):
        golden.softmax(np.zeros((1, 3)), [3], [0], [0], [0], np.zeros(10))
    with pytest.raises(ValueError, match="lengths"):
        golden.softmax(np.zeros((1, 3)), [4], [0], [0], [0], golden.exp_table(0.1))


def test_golden_reciprocal_matches_exact_division():
    sums = np.array([1, 2, 3, 32768, 32769, 65535, 512 * 65535, 12345678])
    r, b = golden.reciprocals(sums)
    for s, rr, bb in zip(sums.tolist(), r.tolist(), b.tolist()):
        assert bb == s.bit_length() and rr == (1 << (bb + 16)) // s
        assert (1 << 16) < rr <= (1 << 17)


# -- RTL argument checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(max_length=0), TypeError, "Maximum length must be a positive integer"),
    (dict(max_length=2.0), TypeError, "Maximum length must be a positive integer"),
    (dict(lanes=0), TypeError, "Lane count must be a positive integer"),
    (dict(lanes=True), TypeError, "Lane count must be a positive integer"),
    (dict(max_length=4, lanes=5), ValueError, "must not exceed"),
    (dict(max_length=1 << 16), ValueError, "less than 65536"),
])
def test_rejects_bad_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        Softmax(**kwargs)


def test_elaborates_with_odd_parameters():
    for max_length, lanes in ((1, 1), (5, 3), (512, 4)):
        Fragment.get(Softmax(max_length=max_length, lanes=lanes), platform=None).prepare()


# -- RTL in Amaranth's simulator -------------------------------------------------------------------

def run_softmax(dut, batch, table, *, stall=0.0, backpressure=0.0, seed=0, max_cycles=None,
                timing=None):
    """Load ``table``, stream ``batch`` through ``dut``; return the output payloads.

    Random stalls on ``table``, ``cmd`` and ``i`` (never dropping a raised valid)
    and random backpressure on ``o``, whose stream rule is checked. With
    ``timing`` (a list), appends ``(cycle, kind)`` for every ``i`` transfer and
    ``o`` transfer, cycles counted from the end of the table load.
    """
    table_p, cmd_p, i_p = cases.encode(batch, dut.lanes, dut.max_length, table,
                                       np.random.default_rng(seed))
    expected_transfers = sum(-(-max(int(c), 1) // dut.lanes) for c in batch["count"])
    if max_cycles is None:
        max_cycles = 400 + 40 * (len(i_p) + expected_transfers + len(cmd_p) * 30)
    rngs = [random.Random(seed + k) for k in range(4)]
    outputs = []
    state = {"table_done": False}

    async def send(ctx, port, payloads, rng, after_table=False):
        if after_table:
            while not state["table_done"]:
                await ctx.tick()
        await send_stream(ctx, port, payloads, stall=stall, rng=rng)

    async def table_source(ctx):
        await send(ctx, dut.table, table_p, rngs[0])
        state["table_done"] = True

    async def cmd_source(ctx):
        await send(ctx, dut.cmd, cmd_p, rngs[1], after_table=True)

    async def i_source(ctx):
        while not state["table_done"]:
            await ctx.tick()
        for payload in i_p:
            while stall and rngs[2].random() < stall:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(Value.cast(dut.i.payload), payload)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        while not state["table_done"]:
            await ctx.tick()
        held = None
        cycle = 0
        while len(outputs) < expected_transfers:
            ready = not (backpressure and rngs[3].random() < backpressure)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload, i_valid, i_ready = await ctx.tick().sample(
                dut.o.valid, Value.cast(dut.o.payload), dut.i.valid, dut.i.ready)
            if held is not None:
                assert valid and payload == held, f"o dropped or changed a held payload at cycle {cycle}"
            held = None
            if timing is not None and i_valid and i_ready:
                timing.append((cycle, "i"))
            if valid and ready:
                outputs.append(payload)
                if timing is not None:
                    timing.append((cycle, "o"))
            elif valid:
                held = payload
            cycle += 1
            assert cycle <= max_cycles, f"only {len(outputs)} of {expected_transfers} outputs after {cycle} cycles"
        # Nothing more may come out.
        ctx.set(dut.o.ready, 1)
        for _ in range(8):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "more outputs than expected"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(table_source, background=True)
    sim.add_testbench(cmd_source, background=True)
    sim.add_testbench(i_source, background=True)
    sim.add_testbench(sink)
    sim.run()
    return outputs


def check_batch(dut, batch, table, **kwargs):
    got = cases.decode(run_softmax(dut, batch, table, **kwargs), dut.lanes)
    expected = cases.expected_outputs(batch, dut.lanes, dut.max_length, table)
    cases.compare(got, expected, batch, dut.lanes)


@pytest.mark.parametrize("lanes", [1, 3])
@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_rtl_edge_and_error_rows_pysim(lanes, stall):
    rng = np.random.default_rng(7 + lanes)
    max_length = 12
    batch = cases.concat_rows(cases.edge_rows(max_length, rng), cases.error_rows(max_length, rng),
                              cases.random_rows(rng, 6, max_length))
    check_batch(Softmax(max_length=max_length, lanes=lanes), batch, golden.exp_table(0.07),
                stall=stall, backpressure=stall, seed=lanes)


def test_rtl_random_rows_with_stalls_pysim():
    rng = np.random.default_rng(11)
    batch = cases.random_rows(rng, 12, 40)
    check_batch(Softmax(max_length=40, lanes=2), batch, golden.exp_table(0.12), stall=0.4,
                backpressure=0.5, seed=3)


def test_latency_and_steady_state_throughput_pysim():
    """Latency matches row_latency(); back-to-back rows of >= 24 transfers stream at one
    transfer per cycle; short rows at one per DIVIDER_CYCLES."""
    from rtl.softmax import DIVIDER_CYCLES
    for n, lanes, rows in ((1, 1, 1), (9, 1, 1), (40, 2, 1), (24, 1, 5), (50, 2, 4), (3, 1, 4)):
        rng = np.random.default_rng(n)
        batch = cases.make_rows([rng.integers(-128, 128, n) for _ in range(rows)])
        dut = Softmax(max_length=64, lanes=lanes)
        timing = []
        run_softmax(dut, batch, golden.exp_table(0.1), timing=timing)
        ins = [c for c, kind in timing if kind == "i"]
        outs = [c for c, kind in timing if kind == "o"]
        transfers = -(-n // lanes)
        assert outs[0] - ins[0] == dut.row_latency(n)
        if rows > 1:
            per_row = (outs[-1] - outs[transfers - 1]) / (rows - 1)
            assert per_row == max(transfers, DIVIDER_CYCLES)
            if transfers >= 24:
                assert outs[-1] - outs[0] == rows * transfers - 1      # no bubble at all


# -- RTL on Verilator -------------------------------------------------------------------------------

@pytest.mark.cocotb
@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_softmax_512_verilator(stall):
    """max_length 512, one lane: every edge, mask and error case and random rows, with random
    stalls on table, cmd and i and backpressure on o; zero mismatches against golden."""
    run_cocotb(Softmax(max_length=512, lanes=1), name="softmax_512x1",
               test_module="tests.benches.tb_softmax",
               extra_env=dict(MAX_LENGTH=512, LANES=1, SEED=3 + int(stall * 10), STALL=stall, ROWS=12))


@pytest.mark.cocotb
def test_softmax_two_lanes_verilator():
    """A small two-lane build (max_length 37: odd counts leave a padding lane)."""
    run_cocotb(Softmax(max_length=37, lanes=2), name="softmax_37x2",
               test_module="tests.benches.tb_softmax",
               extra_env=dict(MAX_LENGTH=37, LANES=2, SEED=9, STALL=0.35, ROWS=40, SCALE=0.11))
