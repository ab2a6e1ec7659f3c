"""The board path without a board: the core behind its UART link in simulation, driven
through a pty by the same runtime (``Accelerator``) over ``CoreSerialTransport`` —
the exact bytes a board's serial port would carry."""

import threading
import time

import numpy as np
import pytest

from jalapeno.accelerator import Accelerator, DeviceError
from jalapeno.serial_transport import CoreSerialTransport
from rtl.core.linked_core import LinkedCore
from rtl.core.status import ErrorCode
from sim.cocotb_runner import run_cocotb
from sim.golden.matmul import matmul as golden_matmul
from sim.golden.requantizer import quantize_multipliers, requantize


pytestmark = pytest.mark.cocotb

DIVISOR = 4
CORE = dict(lanes=4, inp_words=1024, wgt_words=1024, out_words=1024, max_rows=64,
            max_length=64, max_hidden=64, queue_depth=8, sched_queue_depth=4)


class UnknownOpcode:
    def to_bytes(self):
        return (15).to_bytes(32, "little")


def test_runtime_over_the_uart_link(tmp_path):
    path_file, done_file = tmp_path / "pty", tmp_path / "done"
    outcome = {}
    rng = np.random.default_rng(9)
    a, w = rng.integers(0, 256, (6, 9)), rng.integers(0, 256, (9, 5))
    x = rng.integers(0, 256, (5, 8))
    bias = rng.integers(-500, 500, 6)
    multiplier, shift = quantize_multipliers(rng.uniform(1e-3, 1e-2, 6))
    w2 = rng.integers(0, 256, (8, 6))

    def host():
        try:
            deadline = time.monotonic() + 1800   # the first Verilator build comes first
            while not path_file.exists():
                assert time.monotonic() < deadline, "the simulation never opened its pty"
                time.sleep(0.05)
            with CoreSerialTransport(path_file.read_text(), lanes=4, timeout=30.0) as link:
                accelerator = Accelerator(link, stats=False)   # fewer bytes over the slow UART
                outcome["matmul"] = accelerator.matmul(a, w, 0)
                outcome["linear"] = accelerator.linear(x, w2, bias=bias, multiplier=multiplier,
                                                       shift=shift)
                try:   # a device error comes back as an exception, and the core recovers
                    accelerator.run(UnknownOpcode())
                except DeviceError as error:
                    outcome["error"] = error
                outcome["after"] = accelerator.matmul(a, w, 0)
        except BaseException as error:
            outcome["failure"] = error
        finally:
            done_file.write_text("done")

    thread = threading.Thread(target=host, daemon=True)
    thread.start()
    run_cocotb(LinkedCore(divisor=DIVISOR, memory_words=4096, shared_pe_module=True, **CORE),
               name="linked_core", test_module="tests.benches.tb_linked_core",
               extra_env={"DIVISOR": DIVISOR, "PTY_PATH_FILE": path_file,
                          "DONE_FILE": done_file, "WALL_SECONDS": 300},
               verilator_args=("--inline-mult", "1"))
    thread.join(timeout=10)
    if "failure" in outcome:
        raise outcome["failure"]
    assert np.array_equal(outcome["matmul"], golden_matmul(a, w, 0))
    expected = requantize(golden_matmul(x, w2, 0), bias[None], multiplier[None], shift[None], 0)
    assert np.array_equal(outcome["linear"], expected["value"].astype(np.int8))
    assert outcome["error"].code == ErrorCode.UNKNOWN_OPCODE
    assert np.array_equal(outcome["after"], golden_matmul(a, w, 0))
