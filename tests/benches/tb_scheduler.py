"""cocotb test of the dynamic-batching scheduler with randomized traffic (run by test_scheduler.py).

Environment: DEPTH, INFLIGHT (the build), SEED, REQUESTS, PATTERN ("steady" or
"bursty"), WORK_CONSERVING.

The testbench submits requests at their arrival times, answers each batch after
a random engine time plus its rows (taking waiting batches in random order, so
batches complete out of order), records every response and batch, then
checks every invariant (sim.golden.scheduler.check_trace) and every batch
decision against the reference policy (sim.golden.scheduler.form_batch) applied
to the queue as it was at the batch's decision time.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from rtl.scheduler import batch_word_layout
from sim.golden import scheduler as golden
from sim.payload import fields_of, pack


DEPTH = int(os.environ.get("DEPTH", "16"))
INFLIGHT = int(os.environ.get("INFLIGHT", "4"))
SEED = int(os.environ.get("SEED", "1"))
REQUESTS = int(os.environ.get("REQUESTS", "2000"))
PATTERN = os.environ.get("PATTERN", "steady")
WORK_CONSERVING = int(os.environ.get("WORK_CONSERVING", "1"))
FETCH_CYCLES = 40

CONFIG = golden.Config(max_batch_rows=16, max_wait_cycles=300,
                       work_conserving=bool(WORK_CONSERVING), aging_cycles=3000)


def make_traffic(rng):
    """(arrival cycle, Request) pairs: steady Poisson-like or bursty arrivals."""
    traffic, t = [], 20
    for i in range(REQUESTS):
        if PATTERN == "bursty":      # bursts of 24 back to back (the queue fills), then gaps
            t += 1 if (i // 24) % 2 == 0 else rng.randint(1, 400)
        else:                        # near the scheduler's capacity
            t += rng.randint(5, 80)
        rows = 0 if rng.random() < 0.01 else rng.choice([1, 1, 1, 2, 3, 4, 8, 13, 17])
        deadline = t + rng.randint(50, 4000) if rng.random() < 0.2 else 0
        request = golden.Request(id=i & 0xFFFF, program=rng.choice([0, 0, 1, 2]), rows=rows,
                                 address=rng.getrandbits(32), priority=int(rng.random() < 0.3),
                                 deadline=deadline)
        traffic.append((t, request))
    return traffic


def pack_request(request):
    from rtl.scheduler import SchedulerRequest
    return pack(SchedulerRequest, {"id": [request.id], "program": [request.program],
                                   "rows": [request.rows], "address": [request.address],
                                   "priority": [request.priority],
                                   "deadline": [request.deadline]})[0]


def unpack_word(value):
    return {name: (value >> offset) & ((1 << width) - 1)
            for name, offset, width, _ in fields_of(batch_word_layout(DEPTH, INFLIGHT))}


@cocotb.test()
async def randomized_traffic(dut):
    rng = random.Random(SEED)
    traffic = make_traffic(rng)
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.req__valid.value = 0
    dut.resp__ready.value = 0
    dut.batch__ready.value = 0
    dut.done__valid.value = 0
    dut.max_batch_rows.value = CONFIG.max_batch_rows
    dut.max_wait_cycles.value = CONFIG.max_wait_cycles
    dut.work_conserving.value = int(CONFIG.work_conserving)
    dut.aging_cycles.value = CONFIG.aging_cycles
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    submissions, responses, dispatches, dones = [], [], [], []
    arrivals = {}                       # id -> arrival cycle (the scheduler's `now`)
    pending_batches = []                # (tag, total_rows) waiting for the engine model
    current = None
    state = {"engine_busy_until": 0, "engine_tag": None}
    next_request = 0
    answered = 0
    cycle_limit = traffic[-1][0] + 400_000

    while True:
        await FallingEdge(dut.clk)
        now = int(dut.now.value)
        # request source
        if next_request < len(traffic) and traffic[next_request][0] <= now:
            dut.req__valid.value = 1
            dut.req__payload.value = pack_request(traffic[next_request][1])
        else:
            dut.req__valid.value = 0
        dut.resp__ready.value = int(rng.random() < 0.8)
        dut.batch__ready.value = int(rng.random() < 0.9)
        # engine model: one batch at a time, done after fetch + rows cycles; it takes the
        # waiting batches in random order, so batches also complete out of dispatch order
        if state["engine_tag"] is None and pending_batches:
            pick = rng.randrange(len(pending_batches))
            tag, rows = pending_batches[pick]
            del pending_batches[pick]
            state["engine_tag"] = tag
            state["engine_busy_until"] = now + rng.randint(FETCH_CYCLES // 2, 6 * FETCH_CYCLES) + rows
        done_valid = state["engine_tag"] is not None and now >= state["engine_busy_until"]
        dut.done__valid.value = int(done_valid)
        if done_valid:
            dut.done__payload.value = state["engine_tag"]
        await ReadOnly()
        if dut.req__valid.value and dut.req__ready.value:
            request = traffic[next_request][1]
            submissions.append((now, request))
            arrivals[request.id] = now
            next_request += 1
        if dut.resp__valid.value and dut.resp__ready.value:
            value = int(dut.resp__payload.value)
            code = golden.Status((value >> 16) & 0x7)
            responses.append((now, value & 0xFFFF, code))
            answered += code != golden.Status.ACCEPTED
        if dut.batch__valid.value and dut.batch__ready.value:
            word = unpack_word(int(dut.batch__payload.value))
            if word["header"]:
                assert current is None, "header inside a batch"
                current = dict(word, segments=[])
            else:
                assert current is not None, "segment without a header"
                current["segments"].append((word["id"], word["rows"], word["address"], word["row_offset"]))
                if word["last"]:
                    assert len(current["segments"]) == current["count"], "segment count"
                    dispatches.append((now, current["batch"], current["program"],
                                       current["segments"], current["time"]))
                    pending_batches.append((current["batch"], current["total_rows"]))
                    current = None
        if done_valid and dut.done__ready.value:
            dones.append((now, state["engine_tag"]))
            state["engine_tag"] = None
        if next_request == len(traffic) and answered == len(traffic):
            break
        assert now < cycle_limit, (f"timed out: {answered} of {len(traffic)} requests answered, "
                                   f"{len(dispatches)} batches")

    # Let the counters settle, then read them.
    for _ in range(3):
        await RisingEdge(dut.clk)
    await ReadOnly()
    counters = {name: int(getattr(dut, name).value) for name in
                ("accepted", "rejected", "timed_out", "batches", "batched_rows", "max_wait",
                 "total_wait", "bad_done")}

    stats = golden.check_trace(submissions, responses,
                               [(decided, tag, prog, segs) for _, tag, prog, segs, decided in dispatches],
                               CONFIG, DEPTH, dones)
    # Batches completed out of dispatch order at least once.
    done_order = [tag for _, tag in dones]
    dispatch_order = [tag for _, tag, *_ in dispatches]
    assert done_order != dispatch_order[:len(done_order)], "no out-of-order completion exercised"

    # Every decision, against the reference policy at the decision time.
    dispatched = set()
    requests_by_id = {r.id: r for _, r in submissions}
    accepted_ids = [i for _, i, code in responses if code == golden.Status.ACCEPTED]
    for _, _, program, segments, decided in dispatches:
        waiting = [golden.Waiting(request=requests_by_id[i], arrival=arrivals[i], slot=0)
                   for i in accepted_ids
                   if arrivals[i] <= decided and i not in dispatched
                   and not (requests_by_id[i].deadline and decided > requests_by_id[i].deadline)]
        expected = [w.request.id for w in golden.form_batch(waiting, decided, CONFIG)]
        got = [seg[0] for seg in segments]
        assert got == expected, f"batch decided at {decided}: got {got}, policy says {expected}"
        dispatched.update(got)

    # The hardware's counters agree with the trace.
    codes = [code for _, _, code in responses]
    assert counters["accepted"] == codes.count(golden.Status.ACCEPTED)
    assert counters["rejected"] == (codes.count(golden.Status.REJECTED_FULL)
                                    + codes.count(golden.Status.REJECTED_INVALID))
    assert counters["timed_out"] == codes.count(golden.Status.TIMED_OUT)
    assert counters["batches"] == len(dispatches)
    assert counters["batched_rows"] == sum(s[1] for d in dispatches for s in d[3])
    waits = [decided - arrivals[s[0]] for *_, segs, decided in dispatches for s in segs]
    assert counters["total_wait"] == sum(waits)
    assert counters["max_wait"] == max(waits, default=0)
    assert counters["bad_done"] == 0
    dut._log.info(f"{len(traffic)} requests, {len(dispatches)} batches, "
                  f"{codes.count(golden.Status.REJECTED_FULL)} rejected full, "
                  f"{codes.count(golden.Status.TIMED_OUT)} timed out; stats {stats}")
