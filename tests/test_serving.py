"""Serving through the hardware scheduler in front of the core: requests arrive over
time, the scheduler forms the batches, the host runs each batch's linear layer over the
concatenated rows of its requests; every result is checked against the golden models."""

import numpy as np
import pytest

from jalapeno.accelerator import Accelerator
from jalapeno.serving import Request, Server
from jalapeno.sim_transport import SimTransport
from rtl.core.status import Register
from rtl.scheduler import Status
from sim.core_model import PRESETS
from sim.golden.matmul import matmul as golden_matmul
from sim.golden.requantizer import quantize_multipliers, requantize


pytestmark = pytest.mark.cocotb

K, N = 24, 10


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (K, N))
    bias = rng.integers(-3000, 3000, N)
    multiplier, shift = quantize_multipliers(rng.uniform(1e-4, 1e-3, N))

    def golden(x):
        return requantize(golden_matmul(x, w, 0), bias[None], multiplier[None], shift[None],
                          0)["value"].astype(np.int8)

    def program(accelerator, batch, inputs):
        # Selective batching: one linear over the rows of every request of the batch.
        order = sorted(batch.segments, key=lambda s: s.row_offset)
        assert [s.row_offset for s in order] == list(np.cumsum([0] + [s.rows for s in order])[:-1])
        x = np.concatenate([inputs[s.id] for s in order])
        assert len(x) == batch.total_rows
        y = accelerator.linear(x, w, bias=bias, multiplier=multiplier, shift=shift)
        return {s.id: y[s.row_offset:s.row_offset + s.rows] for s in order}

    return golden, program


@pytest.fixture(scope="module")
def accelerator():
    with SimTransport(PRESETS["small"]) as transport:
        yield Accelerator(transport)


def test_batched_results_are_exact_and_answered_by_id(accelerator, layer):
    golden, program = layer
    rng = np.random.default_rng(1)
    requests = [Request(i, 0, rng.integers(0, 256, (int(rng.integers(1, 9)), K)), arrival=300 * i)
                for i in range(24)]
    transport = accelerator.transport
    batches_before = transport.read_register(Register.SCHED_BATCHES)
    accepted_before = transport.read_register(Register.SCHED_ACCEPTED)
    server = Server(accelerator, {0: program}, max_batch_rows=32, max_wait_cycles=1500)
    results, status, batches = server.serve(requests)
    assert all(status[r.id] == Status.DONE for r in requests)
    for r in requests:
        assert np.array_equal(results[r.id], golden(r.inputs)), r.id
    assert len(batches) < len(requests) // 2                      # requests were batched
    assert all(b.total_rows <= 32 for b in batches)
    assert sorted(s.id for b in batches for s in b.segments) == [r.id for r in requests]
    assert transport.read_register(Register.SCHED_BATCHES) - batches_before == len(batches)
    assert transport.read_register(Register.SCHED_ACCEPTED) - accepted_before == len(requests)


def test_invalid_full_and_late_requests_get_their_status(accelerator, layer):
    golden, program = layer
    rng = np.random.default_rng(2)
    now = accelerator.transport.read_register(Register.SCHED_NOW)
    requests = [Request(100, 0, np.zeros((0, K), dtype=np.int64))]             # rows = 0
    requests += [Request(200 + i, 0, rng.integers(0, 256, (1, K))) for i in range(20)]
    requests += [Request(300, 0, rng.integers(0, 256, (2, K)), arrival=10,
                         deadline=now + 12)]                                     # hopeless deadline
    server = Server(accelerator, {0: program}, max_batch_rows=64, max_wait_cycles=5000)
    results, status, _ = server.serve(requests)
    assert status[100] == Status.REJECTED_INVALID
    full = [i for i in range(200, 220) if status[i] == Status.REJECTED_FULL]
    assert len(full) == 20 - PRESETS["small"].sched_queue_depth               # queue of 16
    assert status[300] in (Status.TIMED_OUT, Status.REJECTED_FULL)
    for i in range(200, 220):
        if status[i] == Status.DONE:
            assert np.array_equal(results[i], golden(requests[1 + i - 200].inputs))


def test_unknown_program_is_a_clear_error(accelerator, layer):
    with pytest.raises(ValueError, match="no program registered"):
        Server(accelerator, {0: layer[1]}).serve([Request(1, 7, np.zeros((1, K), dtype=np.int64))])
