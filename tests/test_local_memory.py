"""LocalMemory (rtl/core/local_memory.py), the on-chip "external memory" of the ULX3S core,
in Amaranth's simulator: the core's read and write bursts and the host link's word reads
and writes at the same time, with random stalls; every word lands and reads back, and a
host access never takes the memory in the middle of a core burst."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.core.local_memory import LocalMemory


WORDS, BITS = 256, 16
CORE_AREA, HOST_AREA = range(0, 128), range(128, 256)


def bursts(rng, area, count):
    """``count`` random bursts ``(addr, length)`` inside ``area`` (some of length 0)."""
    out = []
    for _ in range(count):
        length = int(rng.choice([0, 1, int(rng.integers(2, 20))], p=[0.1, 0.2, 0.7]))
        addr = int(rng.integers(area.start, area.stop - length + 1))
        out.append((addr, length))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_core_bursts_and_host_words_share_the_memory(seed):
    rng = np.random.default_rng(seed)
    dut = LocalMemory(words=WORDS, word_bits=BITS)
    model = {}
    core_writes = [(a, n, [int(w) for w in rng.integers(0, 1 << BITS, n)])
                   for a, n in bursts(rng, CORE_AREA, 25)]
    host_writes = [(int(a), int(w)) for a, w in zip(rng.integers(HOST_AREA.start, HOST_AREA.stop, 60),
                                                    rng.integers(0, 1 << BITS, 60))]
    for a, _, ws in core_writes:
        model.update({a + i: w for i, w in enumerate(ws)})
    model.update(host_writes)
    written = sorted(model)
    core_reads = bursts(rng, range(0, WORDS), 25)
    host_reads = [written[int(i)] for i in rng.integers(0, len(written), 60)]
    log = {"host_in_core_burst": 0, "host_writes_taken": 0, "acks": 0}

    async def writes(ctx):
        core, host = dut.core, dut.host_write
        pending, host_left = list(core_writes), list(host_writes)
        burst = None          # words of the burst being written
        bursts_open = 0       # bursts taken and not acknowledged
        ctx.set(core.wr_ack.ready, 1)
        while pending or burst or host_left or bursts_open:
            if burst is None and pending:
                addr, n, ws = pending[0]
                ctx.set(core.wr_req.valid, 1)
                ctx.set(core.wr_req.payload, {"addr": addr, "len": n})
            else:
                ctx.set(core.wr_req.valid, 0)
            word_offered = bool(burst) and rng.random() < 0.6
            ctx.set(core.wr_data.valid, word_offered)
            if burst:
                ctx.set(core.wr_data.payload, burst[0])
            if host_left and rng.random() < 0.5:
                ctx.set(host.valid, 1)
                ctx.set(host.payload, {"address": host_left[0][0], "data": host_left[0][1]})
            else:
                ctx.set(host.valid, 0)
            (req_taken, word_taken, host_taken, ack) = (
                ctx.get(core.wr_req.valid & core.wr_req.ready),
                ctx.get(core.wr_data.valid & core.wr_data.ready),
                ctx.get(host.valid & host.ready),
                ctx.get(core.wr_ack.valid))
            if host_taken:
                log["host_writes_taken"] += 1
                if burst is not None:    # a core burst taken and not all written
                    log["host_in_core_burst"] += 1
                host_left.pop(0)
            if word_taken:
                burst.pop(0)
            if ack:
                bursts_open -= 1
                log["acks"] += 1
            if burst == []:
                burst = None
            if req_taken:
                bursts_open += 1
                burst = list(pending.pop(0)[2]) or None
            await ctx.tick()
        ctx.set(core.wr_data.valid, 0)
        ctx.set(host.valid, 0)

    async def reads(ctx):
        core = dut.core
        await ctx.tick().repeat(400)     # after the writes (their test ends before this)
        while log["acks"] < len(core_writes) or log["host_writes_taken"] < len(host_writes):
            await ctx.tick()
        expected_core = [model.get(a + i, 0) for a, n in core_reads for i in range(n)]
        got_core, got_host = [], []
        pending, host_left = list(core_reads), list(host_reads)
        host_asked = []
        for _ in range(5000):
            if not pending and not host_left and len(got_core) == len(expected_core) \
                    and len(got_host) == len(host_reads):
                break
            if pending:
                ctx.set(core.rd_req.valid, 1)
                ctx.set(core.rd_req.payload, {"addr": pending[0][0], "len": pending[0][1]})
            else:
                ctx.set(core.rd_req.valid, 0)
            ctx.set(dut.host_read_address.valid, bool(host_left) and rng.random() < 0.5)
            if host_left:
                ctx.set(dut.host_read_address.payload, host_left[0])
            ctx.set(core.rd_data.ready, rng.random() < 0.7)
            ctx.set(dut.host_read_data.ready, rng.random() < 0.7)
            if ctx.get(core.rd_req.valid & core.rd_req.ready):
                pending.pop(0)
            if ctx.get(dut.host_read_address.valid & dut.host_read_address.ready):
                host_asked.append(host_left.pop(0))
            if ctx.get(core.rd_data.valid & core.rd_data.ready):
                got_core.append(ctx.get(core.rd_data.payload))
            if ctx.get(dut.host_read_data.valid & dut.host_read_data.ready):
                got_host.append(ctx.get(dut.host_read_data.payload))
            await ctx.tick()
        assert got_core == expected_core        # words never written read as 0
        assert got_host == [model[a] for a in host_reads]
        log["read_done"] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(writes, background=True)
    sim.add_testbench(reads)
    sim.run()
    assert log.get("read_done")
    assert log["acks"] == len(core_writes)
    assert log["host_writes_taken"] == len(host_writes)
    assert log["host_in_core_burst"] == 0
