"""cocotb bench: the core behind its UART link (``LinkedCore``), its pins joined to a pty.

The host (the pytest process) runs the normal runtime — ``Accelerator`` over
``CoreSerialTransport`` on the pty — exactly as it would over a board's USB serial
port; this bench only moves bytes between the pty and the ``rx``/``tx`` pins, bit by
bit, until the host writes ``DONE_FILE``.

Environment: DIVISOR, PTY_PATH_FILE, DONE_FILE, WALL_SECONDS.
"""

import os
import time
import tty
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Timer

from sim.cocotb_stream import reset_dut
from tests.benches.tb_link_device import UartPins


@cocotb.test()
async def linked_core_over_pty(dut):
    divisor = int(os.environ["DIVISOR"])
    path_file = Path(os.environ["PTY_PATH_FILE"])
    done_file = Path(os.environ["DONE_FILE"])
    deadline = time.monotonic() + float(os.environ.get("WALL_SECONDS", "300"))
    Clock(dut.clk, 10, unit="ns").start()
    pins = UartPins(dut, divisor)
    await reset_dut(dut)
    pins.start_monitor()

    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    temporary = path_file.with_suffix(".tmp")
    temporary.write_text(os.ttyname(slave))
    temporary.rename(path_file)
    idle = Timer(20 * pins.bit_ns, unit="ns")
    forwarded = 0

    def forward():
        nonlocal forwarded
        if len(pins.received) > forwarded:
            forwarded += os.write(master, bytes(pins.received[forwarded:]))

    try:
        while not done_file.exists():
            assert time.monotonic() < deadline, "the host did not finish in time"
            forward()
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                data = b""
            for byte in data:
                await pins.send_byte(byte)
                forward()
            if not data:
                await idle
    finally:
        os.close(master)
        os.close(slave)
    assert pins.framing_errors == 0
