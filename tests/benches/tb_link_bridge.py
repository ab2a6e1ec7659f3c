"""cocotb fuzz of the host bridge at the byte-stream level (run by test_link.py).

Environment: SEED, FRAMES, and the bridge's build parameters WORD_BYTES,
MEMORY_WORDS, REGISTER_COUNT, MAX_PAYLOAD, TIMEOUT_CYCLES; LINK_DEBUG=1 logs every
chunk.

The stimulus is :func:`tests.test_link.fuzz_chunks`: valid frames of every opcode,
back-to-back pairs, frames with bad addresses, impossible lengths, oversized
payloads, unknown opcodes, bad CRCs, flipped bits, truncated frames (each followed
by an idle gap that times the frame out), and garbage between frames. Bytes go in
with random gaps shorter than the time-out; the response stream has random
backpressure; the device behind the bridge stalls and answers reads after random
latencies (:class:`tests.benches.tb_link_device.LinkDevice`).

Checked against :class:`sim.golden.link_frame.ReferenceDevice`: every response byte
(chunk by chunk), every memory, register and instruction access in order, the
final memory and registers, and the frame counters; and for every chunk whose frame
is corrupted or invalid, that the device saw no access at all while it was handled.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from sim.cocotb_stream import reset_dut
from sim.golden.link_frame import Status, parse_responses
from tests.benches.tb_link_device import (ByteSink, ByteSource, LinkDevice, config_from_env,
                                         describe, step_models)
from tests.test_link import expected_for_chunk, fuzz_plan


@cocotb.test()
async def fuzz(dut):
    seed = int(os.environ.get("SEED", "1"))
    frames = int(os.environ.get("FRAMES", "10000"))
    cfg = config_from_env()
    memory, registers, chunks = fuzz_plan(cfg, seed, frames)
    reference = cfg.reference(memory, registers)
    dut._log.info("seed %d: %d chunks, %d frames", seed, len(chunks),
                  sum(c.frames for c in chunks))

    clk = dut.clk
    Clock(clk, 10, unit="ns").start()
    device = LinkDevice(dut, memory=memory, registers=registers, rng=random.Random(seed + 1))
    source = ByteSource(dut, random.Random(seed + 2), max_gap=min(4, cfg.timeout_cycles // 4))
    sink = ByteSink(dut, random.Random(seed + 3))
    models = (source, sink)
    falling = FallingEdge(clk)
    await reset_dut(dut)
    cocotb.start_soon(device.run_events(clk))  # steps only while the device ports are busy

    debug = bool(os.environ.get("LINK_DEBUG"))
    cycles = 0
    for index, chunk in enumerate(chunks):
        expected, _ = expected_for_chunk(reference, chunk)
        before = device.effects()
        sink.received.clear()
        source.load(chunk.data)
        limit = 200 + 12 * (len(chunk.data) + len(expected)) + 2 * cfg.timeout_cycles
        spent = 0
        received = sink.received
        while not source.done or len(received) < len(expected):
            await step_models(falling, models)
            spent += 1
            if spent > limit:
                raise AssertionError("bridge hung or too slow: "
                                     + describe(index, chunk, expected, received))
            if received and (len(received) > len(expected)
                             or received[-1] != expected[len(received) - 1]):
                raise AssertionError("response mismatch: "
                                     + describe(index, chunk, expected, received))
        cycles += spent
        if debug:
            dut._log.info("chunk %d %s: got %s in %d cycles", index, chunk.category,
                          bytes(received).hex(), spent)
        assert not device.errors, f"{device.errors} in chunk {index}"
        if chunk.corrupted:
            assert device.effects() == before, (
                "a rejected frame had an effect: " + describe(index, chunk, expected, b""))
            assert all(r.status != Status.OK for r in parse_responses(expected))

    # Nothing more comes out once everything has been answered.
    sink.received.clear()
    for _ in range(3 * cfg.timeout_cycles):
        await step_models(falling, models)
    assert not sink.received, f"unexpected bytes at the end: {bytes(sink.received).hex()}"

    checks = {
        "memory writes": (device.mem_writes, reference.mem_writes),
        "memory reads": (device.mem_reads, reference.mem_reads),
        "register writes": (device.reg_writes, reference.reg_writes),
        "register reads": (device.reg_reads, reference.reg_reads),
        "instructions": (device.instructions, reference.instructions),
        "final memory": (device.memory, reference.memory),
        "final registers": (device.registers, reference.registers),
        "frames_ok": (int(dut.frames_ok.value), reference.frames_ok & 0xFFFF),
        "frames_bad": (int(dut.frames_bad.value), reference.frames_bad & 0xFFFF),
    }
    for what, (got, want) in checks.items():
        assert got == want, f"{what} differ from the reference"
    dut._log.info("%d chunks, %d cycles; accesses: %d writes, %d reads, %d instructions, "
                  "%d register writes, %d register reads; frames ok %d, bad %d; no mismatch",
                  len(chunks), cycles, len(device.mem_writes), len(device.mem_reads),
                  len(device.instructions), len(device.reg_writes), len(device.reg_reads),
                  reference.frames_ok, reference.frames_bad)
