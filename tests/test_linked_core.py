"""The board path without a board: the core behind its UART link in simulation, driven
through a pty by the same runtime (``Accelerator``, ``Server``) over
``CoreSerialTransport`` — the exact bytes a board's serial port would carry."""

import threading
import time

import numpy as np
import pytest

from jalapeno.accelerator import Accelerator, DeviceError
from jalapeno.serial_transport import CoreSerialTransport
from jalapeno.serving import Request, Server
from jalapeno.sim_transport import SimTransport
from rtl.core.linked_core import LinkedCore, SchedLinkRegister
from rtl.core.status import ErrorCode, Register
from rtl.scheduler import Status
from sim.cocotb_runner import run_cocotb
from sim.core_model import CoreConfig
from sim.golden.matmul import matmul as golden_matmul
from sim.golden.requantizer import quantize_multipliers, requantize


pytestmark = pytest.mark.cocotb

DIVISOR = 4
CORE = dict(lanes=4, inp_words=1024, wgt_words=1024, out_words=1024, max_rows=64,
            max_length=64, max_hidden=64, queue_depth=8, sched_queue_depth=4)
MEMORY_WORDS = 4096


def over_the_link(tmp_path, host):
    """Run ``host(link)`` (a ``CoreSerialTransport``) in a thread against the simulated
    LinkedCore (one Verilator build for every test here); re-raise what it raised."""
    path_file, done_file = tmp_path / "pty", tmp_path / "done"
    outcome = {}

    def thread_main():
        try:
            deadline = time.monotonic() + 1800   # the first Verilator build comes first
            while not path_file.exists():
                assert time.monotonic() < deadline, "the simulation never opened its pty"
                time.sleep(0.05)
            with CoreSerialTransport(path_file.read_text(), lanes=4, timeout=30.0) as link:
                outcome["value"] = host(link)
        except BaseException as error:
            outcome["failure"] = error
        finally:
            done_file.write_text("done")

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    run_cocotb(LinkedCore(divisor=DIVISOR, memory_words=MEMORY_WORDS, shared_pe_module=True,
                          **CORE),
               name="linked_core", test_module="tests.benches.tb_linked_core",
               extra_env={"DIVISOR": DIVISOR, "PTY_PATH_FILE": path_file,
                          "DONE_FILE": done_file, "WALL_SECONDS": 300},
               verilator_args=("--inline-mult", "1"))
    thread.join(timeout=10)
    if "failure" in outcome:
        raise outcome["failure"]
    return outcome["value"]


class UnknownOpcode:
    def to_bytes(self):
        return (15).to_bytes(32, "little")


def test_runtime_over_the_uart_link(tmp_path):
    rng = np.random.default_rng(9)
    a, w = rng.integers(0, 256, (6, 9)), rng.integers(0, 256, (9, 5))
    x = rng.integers(0, 256, (5, 8))
    bias = rng.integers(-500, 500, 6)
    multiplier, shift = quantize_multipliers(rng.uniform(1e-3, 1e-2, 6))
    w2 = rng.integers(0, 256, (8, 6))

    def host(link):
        outcome = {}
        accelerator = Accelerator(link, stats=False)   # fewer bytes over the slow UART
        outcome["matmul"] = accelerator.matmul(a, w, 0)
        outcome["linear"] = accelerator.linear(x, w2, bias=bias, multiplier=multiplier,
                                               shift=shift)
        try:   # a device error comes back as an exception, and the core recovers
            accelerator.run(UnknownOpcode())
        except DeviceError as error:
            outcome["error"] = error
        outcome["after"] = accelerator.matmul(a[:2, :5], w[:5, :3], 0)   # recovered: a small one
        return outcome

    outcome = over_the_link(tmp_path, host)
    assert np.array_equal(outcome["matmul"], golden_matmul(a, w, 0))
    expected = requantize(golden_matmul(x, w2, 0), bias[None], multiplier[None], shift[None], 0)
    assert np.array_equal(outcome["linear"], expected["value"].astype(np.int8))
    assert outcome["error"].code == ErrorCode.UNKNOWN_OPCODE
    assert np.array_equal(outcome["after"], golden_matmul(a[:2, :5], w[:5, :3], 0))


# Serving: requests whose batches do not depend on how many cycles the host takes between
# its steps (only trigger 1, full batches, fires; each phase is over before the next
# arrives), so the link (thousands of cycles per frame) and the simulation (no host time)
# must give the same batches. 3 has no rows (REJECTED_INVALID); 1..5 fill the queue of 4
# and 5 completes program 0's rows: batch {1, 5}; 6 completes program 1's: {2, 4, 6};
# 8 is high priority: {8, 7}.
SERVE = dict(max_batch_rows=8, max_wait_cycles=1 << 30, work_conserving=False,
             aging_cycles=1 << 30)
PHASE = 100_000
REQUESTS = [(1, 0, 2, 0, 0), (2, 1, 3, 0, 0), (3, 0, 0, 0, 0), (4, 1, 4, 0, 0), (5, 0, 6, 0, 0),
            (6, 1, 1, PHASE, 0), (7, 2, 5, 2 * PHASE, 0), (8, 2, 3, 2 * PHASE, 1)]


def serve(transport):
    """Serve REQUESTS through ``Server``; the program of a batch only reports where each
    request landed (the scheduler's ports are under test, not the array)."""
    requests = [Request(id, program, np.full((rows, 1), id), arrival=arrival, priority=priority)
                for id, program, rows, arrival, priority in REQUESTS]

    def program(accelerator, batch, inputs):
        return {s.id: (batch.tag, batch.program, s.row_offset, int(inputs[s.id].sum()))
                for s in batch.segments}

    server = Server(Accelerator(transport, stats=False), {p: program for p in range(3)}, **SERVE)
    results, status, batches = server.serve(requests)
    batches = [(b.tag, b.program, b.total_rows,
                [(s.id, s.rows, s.address, s.row_offset) for s in b.segments]) for b in batches]
    return results, {id: Status(code) for id, code in status.items()}, batches


def test_serving_over_the_uart_link(tmp_path):
    config = CoreConfig(dram_words=MEMORY_WORDS, **CORE)   # the scheduler the LinkedCore has
    with SimTransport(config) as transport:
        expected = serve(transport)
    assert [segments for *_, segments in expected[2]] == [
        [(1, 2, 0, 0), (5, 6, 0, 2)], [(2, 3, 0, 0), (4, 4, 0, 3), (6, 1, 0, 7)],
        [(8, 3, 0, 0), (7, 5, 0, 3)]]
    assert expected[1][3] == Status.REJECTED_INVALID

    def host(link):
        served = serve(link)
        # Nothing is left behind, nothing was dropped, and an empty read is well defined.
        return served, link.read_events(), link.read_register(SchedLinkRegister.RESPONSE), \
            link.read_register(SchedLinkRegister.BATCH), \
            link.read_register(SchedLinkRegister.DROPPED), \
            link.read_register(Register.SCHED_ACCEPTED)

    served, events, response, batch, dropped, accepted = over_the_link(tmp_path, host)
    assert served == expected
    assert events == ([], []) and response == 0 and batch == 0 and dropped == 0
    assert accepted == 7


def test_no_scheduler_answers_bad_address():
    """A LinkedCore built without the scheduler (the ULX3S payload) has no scheduler
    registers: the bridge answers BAD_ADDRESS at once (Amaranth's simulator, UART pins)."""
    from amaranth.sim import Simulator

    from sim.golden import link_frame as lf

    dut = LinkedCore(divisor=DIVISOR, memory_words=16, lanes=4, inp_words=16, wgt_words=16,
                     out_words=16, max_rows=4, max_length=8, max_hidden=8, queue_depth=2,
                     scheduler=False, vector_units=False, requantizer=False, fp8=False)
    # (request, response bytes): an error response has no payload, a register value 4 bytes
    frames = [(lf.read_reg(SchedLinkRegister.STATUS), 6),
              (lf.write_reg(SchedLinkRegister.REQUEST + 3, 7), 6),
              (lf.read_reg(SchedLinkRegister.BATCH), 6), (lf.read_reg(Register.CONFIG), 10)]
    received = bytearray()

    async def host(ctx):
        for frame, response in frames:
            expected = len(received) + response
            for byte in frame:
                for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                    ctx.set(dut.rx, bit)
                    await ctx.tick().repeat(DIVISOR)
            for _ in range(100 * DIVISOR * 10):
                if len(received) >= expected:
                    break
                await ctx.tick()
            assert len(received) == expected, "no complete response"

    async def device_tx(ctx):
        for _ in range(sum(response for _, response in frames)):
            await ctx.tick().until(dut.tx == 0)               # a start bit
            await ctx.tick().repeat(DIVISOR // 2 + DIVISOR)   # the middle of bit 0
            byte = 0
            for k in range(8):
                byte |= ctx.get(dut.tx) << k
                await ctx.tick().repeat(DIVISOR)
            received.append(byte)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(device_tx)
    sim.add_testbench(host)
    sim.run()
    responses = lf.parse_responses(bytes(received))
    assert [r.status for r in responses] == [lf.Status.BAD_ADDRESS] * 3 + [lf.Status.OK]
    assert not int.from_bytes(responses[3].payload, "little") & 8   # CONFIG: no scheduler
