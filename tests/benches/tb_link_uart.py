"""cocotb test of the UART host bridge at the pin level (run by test_link.py).

Environment: SEED, FRAMES, DIVISOR, and the bridge's build parameters WORD_BYTES,
MEMORY_WORDS, REGISTER_COUNT, MAX_PAYLOAD, TIMEOUT_CYCLES.

The host sends the fuzz chunks of :func:`tests.test_link.fuzz_chunks` (pin-level
mix: no back-to-back pairs, some bytes sent with a low stop bit) into the ``rx``
pin bit by bit, with random idle gaps of up to two bit times between characters,
and decodes the ``tx`` pin. Like a real host it waits for each response before it
sends anything more: a UART has no flow control, so bytes sent while the bridge is
busy would be lost (and counted in ``overruns``). Checked against
:class:`sim.golden.link_frame.ReferenceDevice` as in ``tb_link_bridge.py``, plus the
receiver's counters: one framing error per bad stop bit, no overrun.
"""

import os
import random

import cocotb
from cocotb.clock import Clock

from sim.cocotb_stream import reset_dut
from sim.golden.link_frame import Status, parse_responses
from tests.benches.tb_link_device import LinkDevice, UartPins, config_from_env, describe
from tests.test_link import fuzz_plan


@cocotb.test()
async def fuzz_pins(dut):
    seed = int(os.environ.get("SEED", "1"))
    frames = int(os.environ.get("FRAMES", "300"))
    divisor = int(os.environ["DIVISOR"])
    cfg = config_from_env()

    memory, registers, chunks = fuzz_plan(cfg, seed, frames, pin_level=True)
    reference = cfg.reference(memory, registers)
    dut._log.info("seed %d, divisor %d: %d chunks, %d frames", seed, divisor, len(chunks),
                  sum(c.frames for c in chunks))

    clk = dut.clk
    Clock(clk, 10, unit="ns").start()
    device = LinkDevice(dut, memory=memory, registers=registers, rng=random.Random(seed + 1))
    pins = UartPins(dut, divisor)
    await reset_dut(dut)
    cocotb.start_soon(device.run_events(clk))
    pins.start_monitor()
    gaps = random.Random(seed + 2)

    byte_ns = 10 * pins.bit_ns
    bad_stop_bits = 0
    for index, chunk in enumerate(chunks):
        pins.received.clear()
        before = device.effects()
        expected = bytearray()
        for position, byte in enumerate(chunk.data):
            dropped = position == chunk.drop
            await pins.send_byte(byte, stop=0 if dropped else 1,
                                 gap_bits=gaps.choice([0, 0, 0, 1, 2]))
            if dropped:
                bad_stop_bits += 1
                continue
            response = reference.feed(bytes([byte]))
            if response:
                # Stop and wait: the whole response before anything more.
                expected += response
                budget = (len(response) + 20) * byte_ns + 20 * pins.bit_ns
                await pins.wait_bytes(len(expected), timeout_ns=budget)
                assert pins.received == expected, "response mismatch: " + describe(
                    index, chunk, bytes(expected), pins.received)
        if reference.in_frame:
            expected += reference.timeout()
        budget = 20 * byte_ns + 10 * cfg.timeout_cycles * 10
        await pins.wait_bytes(len(expected), timeout_ns=budget)
        assert pins.received == expected, "response mismatch: " + describe(
            index, chunk, bytes(expected), pins.received)
        assert not device.errors, f"{device.errors} in chunk {index}"
        if chunk.corrupted:
            assert device.effects() == before, (
                "a rejected frame had an effect: " + describe(index, chunk, bytes(expected), b""))
            assert all(r.status != Status.OK for r in parse_responses(bytes(expected)))

    pins.received.clear()
    await pins.wait_bytes(1, timeout_ns=3 * cfg.timeout_cycles * 10)
    assert not pins.received, f"unexpected bytes at the end: {bytes(pins.received).hex()}"

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
        "framing_errors": (int(dut.framing_errors.value), bad_stop_bits),
        "overruns": (int(dut.overruns.value), 0),
        "host framing errors": (pins.framing_errors, 0),
    }
    for what, (got, want) in checks.items():
        assert got == want, f"{what} differ: got {got!r:.200}, expected {want!r:.200}"
    dut._log.info("%d chunks, %d bad stop bits; frames ok %d, bad %d; no mismatch",
                  len(chunks), bad_stop_bits, reference.frames_ok, reference.frames_bad)
