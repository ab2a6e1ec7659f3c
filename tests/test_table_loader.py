"""TableLoader (rtl/core/table_loader.py): a TABLE instruction's words to the table writes,
in the Amaranth simulator: every entry of every target lands at its index, nothing past
``count``, ``done`` with the last write; stalls of the word stream and of the table ports
lose nothing; without stalls a table of N entries takes N cycles (N / 2 for a LayerNorm
table of gamma/beta pairs when a word holds two or more entries)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.core.table_loader import TableLoader
from rtl.isa import TableTarget
from rtl.layernorm import BETA_BITS, GAMMA_BITS


MAX_HIDDEN = 64
GAMMA_MASK, BETA_MASK = (1 << GAMMA_BITS) - 1, (1 << BETA_BITS) - 1   # the fields' widths


def run_loader(lanes, target, entries, *, word_gaps, port_stalls, seed):
    """Feed ``entries`` (32-bit values) as words; returns (writes, done cycle, cycles from the
    first word to done). A write is (index, value) or (channel, gamma, beta)."""
    rng = np.random.default_rng(seed)
    per_word = lanes // 4
    count = len(entries)
    padded = list(entries) + [0xDEAD0000 + i for i in range(-count % per_word)]  # past count
    words = [sum((v & 0xFFFFFFFF) << (32 * i) for i, v in enumerate(padded[w:w + per_word]))
             for w in range(0, len(padded), per_word)]
    dut = TableLoader(lanes=lanes, max_hidden=MAX_HIDDEN)
    writes, result = [], {}
    ports = {TableTarget.ACTIVATION: dut.activation, TableTarget.SOFTMAX: dut.softmax,
             TableTarget.LAYERNORM: dut.layernorm}

    async def bench(ctx):
        ctx.set(dut.target, target)
        ctx.set(dut.count, count)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        sent, cycle, first = 0, 0, None
        port = ports[target]
        while cycle < 20 * (count + 10):
            valid = sent < len(words) and not (word_gaps and rng.random() < 0.3)
            ctx.set(dut.words.valid, valid)
            if valid:
                ctx.set(dut.words.payload, words[sent])
            ready = not (port_stalls and rng.random() < 0.3)
            for p in ports.values():
                ctx.set(p.ready, ready)
            await ctx.delay(1e-9)
            if valid and ctx.get(dut.words.ready):
                first = cycle if first is None else first
                sent += 1
            if ctx.get(port.valid) and ready:
                payload = ctx.get(port.payload)
                if target == TableTarget.LAYERNORM:     # (bit patterns: the fields are signed)
                    writes.append((payload.index, payload.gamma & GAMMA_MASK,
                                   payload.beta & BETA_MASK))
                else:
                    bits = 8 if target == TableTarget.ACTIVATION else 16
                    writes.append((payload.index, payload.value & ((1 << bits) - 1)))
            for other in ports.values():
                assert other is port or not ctx.get(other.valid)
            done = ctx.get(dut.done)
            await ctx.tick()
            cycle += 1
            if done:
                result["cycles"] = cycle - first
                break
        result["sent"] = sent

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert "cycles" in result, "no done pulse"
    assert result["sent"] == len(words)
    return writes, result["cycles"]


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("stalls", [False, True], ids=["streaming", "stalls"])
def test_table_loader_writes_every_entry(lanes, stalls):
    rng = np.random.default_rng(lanes + 2 * stalls)
    for target, count in [(TableTarget.ACTIVATION, 256), (TableTarget.ACTIVATION, 7),
                          (TableTarget.SOFTMAX, 256), (TableTarget.SOFTMAX, 1),
                          (TableTarget.LAYERNORM, 2 * MAX_HIDDEN), (TableTarget.LAYERNORM, 6)]:
        entries = [int(v) for v in rng.integers(0, 1 << 32, count)]
        writes, cycles = run_loader(lanes, target, entries, word_gaps=stalls, port_stalls=stalls,
                                    seed=count)
        if target == TableTarget.LAYERNORM:
            expected = [(c, entries[2 * c] & GAMMA_MASK, entries[2 * c + 1] & BETA_MASK)
                        for c in range(count // 2)]
        else:
            bits = 8 if target == TableTarget.ACTIVATION else 16
            expected = [(i, v & ((1 << bits) - 1)) for i, v in enumerate(entries)]
        assert writes == expected, f"{target.name} count {count}"
        if not stalls:     # one write per cycle after the first word, no bubble between words
            writes_needed = count // 2 if target == TableTarget.LAYERNORM and lanes >= 8 else count
            assert cycles == writes_needed + 1, f"{target.name} count {count}: {cycles} cycles"
