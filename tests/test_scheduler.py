"""Dynamic-batching scheduler: randomized traffic on Verilator, checked against the
reference policy (every decision) and every invariant of the specification."""

import random

import pytest

from sim.golden import scheduler as golden
from sim.scheduler_model import check_run, make_traffic, run_traffic

DEPTH, INFLIGHT = 16, 4
REQUESTS = 10_000


@pytest.mark.cocotb   # RTL on Verilator (`make sim`); the per-cycle driving is in C++
@pytest.mark.parametrize("seed,pattern,work_conserving", [
    (1, "steady", 1), (2, "bursty", 1), (3, "bursty", 0),
])
def test_randomized_traffic_verilator(seed, pattern, work_conserving, tmp_path):
    """10,000 requests through Scheduler(queue_depth=16, max_inflight=4) on the C++ harness
    (sim/scheduler_harness/harness.cpp): random ready signals and an engine model that
    completes batches out of order; then every check of sim.scheduler_model.check_run."""
    config = golden.Config(max_batch_rows=16, max_wait_cycles=300,
                           work_conserving=bool(work_conserving), aging_cycles=3000)
    traffic = make_traffic(random.Random(seed), REQUESTS, pattern)
    trace = run_traffic(traffic, config, queue_depth=DEPTH, max_inflight=INFLIGHT, seed=seed,
                        run_dir=tmp_path)
    stats = check_run(trace, traffic, config, DEPTH)
    print(f"{REQUESTS} requests in {trace.cycles} cycles, {len(trace.dispatches)} batches, "
          f"statuses {stats['status_counts']}")


# -- formal: SymbiYosys bounded model checks (issue: at least 20 cycles, in `make test`) ------

from amaranth.hdl import Assert, Assume, Module, ResetSignal, Signal  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402

from rtl.scheduler import Scheduler, SchedulerRequest  # noqa: E402
from sim.formal import prove  # noqa: E402


@pytest.mark.formal
def test_queue_accounting_and_single_dispatch_bmc():
    """Any inputs, any configuration, resets allowed, 20 cycles: every queued request is
    accounted for (waiting == accepted - timed_out - dispatched: nothing lost, nothing
    created), an accepted request never takes an occupied slot (no overflow), and a
    dispatched slot holds a request (no request is dispatched twice)."""
    prove(Scheduler(queue_depth=3, max_inflight=2, properties=True), "scheduler_safety", depth=20)


#: Cycles a request may wait in a 2-deep queue (see WaitBoundHarness); BMC depth must exceed it.
WAIT_BOUND = 40


class WaitBoundHarness(wiring.Component):
    """The scheduler (2-deep queue, 1 batch in flight) with an engine that answers each
    batch the cycle after its descriptor, a host that always takes responses, and
    `max_wait_cycles` = `aging_cycles` = 0 (so every request is effectively high and
    the queue is served oldest first), no deadlines, no reset. Requests arrive freely.
    Property: no request stays queued more than WAIT_BOUND cycles."""

    req: In(wiring.Signature({"valid": Out(1), "payload": Out(SchedulerRequest)}))

    def __init__(self, bound=WAIT_BOUND):
        self.bound = bound
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = Scheduler(queue_depth=2, max_inflight=1, properties=True)
        engine_busy = Signal()
        engine_tag = Signal()
        word = dut.batch.payload
        with m.If(dut.batch.valid & dut.batch.ready & ~word.header & word.last):
            m.d.sync += [engine_busy.eq(1), engine_tag.eq(word.batch)]
        with m.If(dut.done.valid & dut.done.ready):
            m.d.sync += engine_busy.eq(0)
        m.d.comb += [
            dut.req.valid.eq(self.req.valid), dut.req.payload.eq(self.req.payload),
            dut.resp.ready.eq(1), dut.batch.ready.eq(1),
            dut.done.valid.eq(engine_busy), dut.done.payload.eq(engine_tag),
            dut.max_batch_rows.eq(8), dut.max_wait_cycles.eq(0), dut.aging_cycles.eq(0),
            dut.work_conserving.eq(0),
            Assume(self.req.payload.deadline == 0),
            Assume(~ResetSignal()),
        ]
        for i in range(2):
            m.d.comb += Assert(~dut.occupied[i] | (dut.ages[i] <= self.bound),
                               f"slot {i} waits at most {self.bound} cycles")
        return m


@pytest.mark.formal
def test_wait_bound_bmc():
    prove(WaitBoundHarness(), "scheduler_wait", depth=WAIT_BOUND + 8)


@pytest.mark.formal
def test_wait_bound_is_not_vacuous():
    """A tighter bound fails: the check really looks at waiting requests."""
    with pytest.raises(AssertionError, match="waits at most 20"):
        prove(WaitBoundHarness(bound=20), "scheduler_wait_tight", depth=30)
