"""BufferReader in Amaranth's simulator: a block-RAM read port behind address and data
streams, with and without its address and data stages."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.core.buffer_reader import BufferReader


DEPTH, WIDTH = 64, 16


def reader_on_a_buffer(stages):
    """A reader on a read port without enable (it reads every cycle, as the core's
    buffers do), the buffer holding ``word(i)`` at address i."""
    m = Module()
    init = [word(i) for i in range(DEPTH)]
    m.submodules.buffer = buffer = Memory(shape=WIDTH, depth=DEPTH, init=init)
    read = buffer.read_port()
    m.submodules.reader = reader = BufferReader(addr_width=6, data_width=WIDTH, tag_width=2,
                                                address_stage="address" in stages,
                                                data_stage="data" in stages)
    m.d.comb += [read.addr.eq(reader.port_addr), reader.port_data.eq(read.data)]
    return m, reader


def word(address):
    return (address * 40503 + 7) & 0xFFFF


def run(stages, requests, *, offer, accept, seed):
    """Offer ``(addr, tag)`` requests (each cycle with probability ``offer``), take words
    (with probability ``accept``); returns the words and the cycles they were taken in."""
    m, dut = reader_on_a_buffer(stages)
    rng = np.random.default_rng(seed)
    got, cycles = [], []

    async def bench(ctx):
        pending = list(requests)
        for cycle in range(20 * len(requests) + 20):
            if len(got) == len(requests):
                break
            offering = bool(pending) and rng.random() < offer
            ctx.set(dut.addr.valid, offering)
            if offering:
                ctx.set(dut.addr.payload.addr, pending[0][0])
                ctx.set(dut.addr.payload.tag, pending[0][1])
            ctx.set(dut.data.ready, bool(rng.random() < accept))
            if ctx.get(dut.data.valid) and ctx.get(dut.data.ready):
                got.append((ctx.get(dut.data.payload.data), ctx.get(dut.data.payload.tag)))
                cycles.append(cycle)
            if offering and ctx.get(dut.addr.ready):
                pending.pop(0)
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, cycles


@pytest.mark.parametrize("stages", [(), ("address",), ("data",), ("address", "data")])
@pytest.mark.parametrize("offer, accept", [(1.0, 0.3), (0.5, 0.5), (0.9, 0.95)])
def test_reader_returns_every_word_in_order(stages, offer, accept):
    """Random addresses and tags, random stalls on both sides: every word comes back once,
    in order, with its tag (a lost, repeated or stale word would not match)."""
    rng = np.random.default_rng(int(offer * 10 + accept * 100))
    requests = [(int(a), int(t)) for a, t in zip(rng.integers(0, DEPTH, 200),
                                                rng.integers(0, 4, 200))]
    got, _ = run(stages, requests, offer=offer, accept=accept, seed=3)
    assert got == [(word(a), t) for a, t in requests]


@pytest.mark.parametrize("stages", [(), ("address",), ("data",), ("address", "data")])
def test_reader_latency_and_throughput(stages):
    """Addresses and words always taken: one word per cycle, the first one 2 cycles after
    its address (the read, then the FIFO), one more for each stage."""
    requests = [(i, i % 4) for i in range(40)]
    got, cycles = run(stages, requests, offer=1.0, accept=1.0, seed=0)
    assert got == [(word(a), t) for a, t in requests]
    first = 2 + len(stages)
    assert cycles == list(range(first, first + 40))
