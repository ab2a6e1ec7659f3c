"""cocotb bench joining a pty to the UART host bridge's pins (run by test_link.py).

The bench opens a pty, writes the path of its slave side to ``PTY_PATH_FILE`` and
then moves bytes both ways: bytes the host writes to the slave come out of the
master and go into the ``rx`` pin bit by bit; characters decoded from the ``tx``
pin are written to the master, where the host reads them from the slave. The host
(the pytest process, with :class:`jalapeno.serial_transport.SerialTransport` on the
slave's path) writes ``DONE_FILE`` when it has finished; the bench then writes the
device's final state (memory, registers, instructions) to ``STATE_FILE`` as JSON.

Environment: DIVISOR, the bridge's build parameters (WORD_BYTES, MEMORY_WORDS,
REGISTER_COUNT, MAX_PAYLOAD, TIMEOUT_CYCLES), PTY_PATH_FILE, DONE_FILE, STATE_FILE,
WALL_SECONDS (a limit on the whole run).

The device starts with zeroed memory and register ``i`` holding ``0x1000 + i``.
"""

import json
import os
import random
import time
import tty
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Timer

from sim.cocotb_stream import reset_dut
from tests.benches.tb_link_device import LinkDevice, UartPins, config_from_env


def initial_registers(count):
    return [0x1000 + i for i in range(count)]


@cocotb.test()
async def pty_bridge(dut):
    divisor = int(os.environ["DIVISOR"])
    cfg = config_from_env()
    path_file = Path(os.environ["PTY_PATH_FILE"])
    done_file = Path(os.environ["DONE_FILE"])
    state_file = Path(os.environ["STATE_FILE"])
    deadline = time.monotonic() + float(os.environ.get("WALL_SECONDS", "120"))

    clk = dut.clk
    Clock(clk, 10, unit="ns").start()
    device = LinkDevice(dut, memory=[0] * cfg.memory_words,
                        registers=initial_registers(cfg.register_count),
                        rng=random.Random(5), stall=0.2, max_latency=3)
    pins = UartPins(dut, divisor)
    await reset_dut(dut)
    cocotb.start_soon(device.run_events(clk))
    pins.start_monitor()

    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing, before anyone opens it
    os.set_blocking(master, False)
    temporary = path_file.with_suffix(".tmp")
    temporary.write_text(os.ttyname(slave))
    temporary.rename(path_file)  # the host sees the whole path or nothing
    dut._log.info("pty %s", os.ttyname(slave))

    idle = Timer(10 * pins.bit_ns, unit="ns")
    forwarded = 0
    to_host = bytes_from_host = 0

    def forward():
        nonlocal forwarded, to_host
        if len(pins.received) > forwarded:
            chunk = bytes(pins.received[forwarded:])
            written = os.write(master, chunk)
            forwarded += written
            to_host += written

    try:
        while True:
            assert time.monotonic() < deadline, "the host did not finish in time"
            forward()
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                data = b""
            if data:
                bytes_from_host += len(data)
                for byte in data:
                    await pins.send_byte(byte)
                    forward()
                continue
            if done_file.exists():
                break
            await idle
    finally:
        os.close(master)
        os.close(slave)

    state_file.write_text(json.dumps({
        "memory": [hex(word) for word in device.memory],
        "registers": device.registers,
        "instructions": [hex(word) for word in device.instructions],
        "errors": device.errors,
        "frames_ok": int(dut.frames_ok.value),
        "frames_bad": int(dut.frames_bad.value),
        "framing_errors": int(dut.framing_errors.value),
        "overruns": int(dut.overruns.value),
    }))
    dut._log.info("%d bytes from the host, %d to it; frames ok %d, bad %d", bytes_from_host,
                  to_host, int(dut.frames_ok.value), int(dut.frames_bad.value))
    assert not device.errors, device.errors
