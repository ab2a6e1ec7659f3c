"""Reference model of the dynamic-batching request scheduler (``rtl/scheduler.py``).

The policy is specified in ``docs/scheduler.md``; this module follows it literally.
Pure Python + NumPy (matplotlib only inside :func:`bench_scheduler`).

Contents
--------
- data: :class:`Request`, :class:`Config`, :class:`Status`, :class:`Waiting`;
- the decision functions the RTL's decisions are checked against:
  :func:`effectively_high`, :func:`order_key`, :func:`head`, :func:`form_batch`,
  :func:`trigger_reasons` / :func:`triggers`, :func:`timed_out`;
- :func:`check_trace`: an invariant checker for a recorded trace (e.g. from a cocotb test);
- :func:`simulate`: an event-driven model of the whole policy with an engine cost model;
- :func:`bench_scheduler`: throughput / latency sweep, batching on vs off, with a plot.

Readings of the specification (the RTL must agree; each is marked *[reading]* below)
-------------------------------------------------------------------------------------
1. ``wait = now - arrival`` where ``arrival`` is ``now`` in the cycle the request was
   accepted. Aging: effectively high iff ``priority == 1 or wait >= aging_cycles``
   (so ``aging_cycles = 0`` makes every request effectively high).
2. Order key ``(not effectively_high, arrival, slot)``, smallest first. Slots matter only
   for requests accepted in the same cycle (impossible with one submission per cycle).
3. Trigger 1 sums the rows of **every** waiting request of the head's program (including
   requests that will not fit the batch by first fit), compared ``>= max_batch_rows``.
4. Trigger 2 uses the **oldest** waiting request (earliest arrival, any program, any
   priority), not the head; ``>= max_wait_cycles`` (``0`` = dispatch whenever possible).
5. Trigger 3 is "no batch in flight" (dispatched and not yet answered ``done``), which is
   stronger than "the engine can take a batch" when several batches may be in flight.
6. Timeouts: ``deadline != 0 and now > deadline`` (a request may still be dispatched in
   its deadline cycle). A request whose deadline already passed when it is submitted is
   still ACCEPTED (the spec rejects only full / invalid) and then TIMED_OUT.
7. A request with ``rows == 0`` is REJECTED_INVALID even when the queue is full
   (validity is checked before occupancy).
8. Timed-out requests are removed before the dispatch decision is taken (a request past
   its deadline is never a head or a batch member at the decision time).
9. 32-bit wrap of ``now`` is not modelled (``2**32`` cycles are outside any test).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np


__all__ = ["Status", "Request", "Config", "Waiting", "effectively_high", "order_key", "head",
           "ordered", "form_batch", "trigger_reasons", "triggers", "timed_out", "check_trace",
           "make_engine_cost", "SimResult", "simulate", "poisson_arrivals", "bench_scheduler",
           "DEFAULT_FETCH_CYCLES"]


class Status(enum.IntEnum):
    ACCEPTED = 0
    REJECTED_FULL = 1
    REJECTED_INVALID = 2
    TIMED_OUT = 3
    DONE = 4


@dataclass(frozen=True)
class Request:
    id: int            # 16 bits, the host's tag
    program: int       # 8 bits
    rows: int          # 12 bits; 0 is invalid (REJECTED_INVALID)
    address: int = 0   # 32 bits
    priority: int = 0  # 1 = high, 0 = low
    deadline: int = 0  # absolute cycle, 0 = none

    def __post_init__(self):
        for name, bits in (("id", 16), ("program", 8), ("rows", 12), ("address", 32),
                           ("priority", 1), ("deadline", 32)):
            value = getattr(self, name)
            if not 0 <= value < (1 << bits):
                raise ValueError(f"Request.{name} = {value} does not fit {bits} bits")


@dataclass(frozen=True)
class Config:
    max_batch_rows: int = 16
    max_wait_cycles: int = 64
    work_conserving: bool = True
    aging_cycles: int = 1024

    def __post_init__(self):
        if not 1 <= self.max_batch_rows < (1 << 12):
            raise ValueError("max_batch_rows must be in 1..4095")
        for name in ("max_wait_cycles", "aging_cycles"):
            if not 0 <= getattr(self, name) < (1 << 32):
                raise ValueError(f"{name} must fit 32 bits")


@dataclass(frozen=True)
class Waiting:
    """A queued request: the request, the cycle it was accepted, its queue slot."""
    request: Request
    arrival: int
    slot: int


# ---------------------------------------------------------------------------------------
# Decision functions (docs/scheduler.md, "Policy")
# ---------------------------------------------------------------------------------------

def effectively_high(waiting, now, config):
    """``priority == 1`` or waited ``>= aging_cycles``."""
    return waiting.request.priority == 1 or now - waiting.arrival >= config.aging_cycles


def order_key(waiting, now, config):
    """Sort key, best first: effectively high, then earlier arrival, then lower slot."""
    return (0 if effectively_high(waiting, now, config) else 1, waiting.arrival, waiting.slot)


def ordered(waiting_list, now, config):
    """The waiting requests best first."""
    return sorted(waiting_list, key=lambda w: order_key(w, now, config))


def head(waiting_list, now, config):
    """The best waiting request, or ``None`` if nothing waits."""
    if not waiting_list:
        return None
    return min(waiting_list, key=lambda w: order_key(w, now, config))


def form_batch(waiting_list, now, config):
    """The batch formed from ``waiting_list`` at cycle ``now`` (list of :class:`Waiting`).

    The head first (always, even if larger than ``max_batch_rows``), then every other
    waiting request of the head's program, best first, if it fits (first fit: a request
    that does not fit is skipped and the scan goes on). Empty list if nothing waits.
    Requests past their deadline must have been removed by the caller (reading 8).
    """
    if not waiting_list:
        return []
    order = ordered(waiting_list, now, config)
    first = order[0]
    batch, rows = [first], first.request.rows
    for w in order[1:]:
        if w.request.program == first.request.program and rows + w.request.rows <= config.max_batch_rows:
            batch.append(w)
            rows += w.request.rows
    return batch


def trigger_reasons(waiting_list, now, config, engine_idle):
    """The dispatch triggers that hold: a tuple of 1, 2, 3 (empty if none / nothing waits).

    ``engine_idle`` means no batch is in flight (trigger 3). Whether the engine can take a
    batch at all (descriptor stream ready, a free tag) is the caller's business.
    """
    if not waiting_list:
        return ()
    reasons = []
    h = head(waiting_list, now, config)
    program_rows = sum(w.request.rows for w in waiting_list if w.request.program == h.request.program)
    if program_rows >= config.max_batch_rows:
        reasons.append(1)
    oldest = min(w.arrival for w in waiting_list)
    if now - oldest >= config.max_wait_cycles:
        reasons.append(2)
    if config.work_conserving and engine_idle:
        reasons.append(3)
    return tuple(reasons)


def triggers(waiting_list, now, config, engine_idle):
    """Does any of the spec's three dispatch triggers hold?"""
    return bool(trigger_reasons(waiting_list, now, config, engine_idle))


def timed_out(waiting, now):
    """``deadline != 0 and now > deadline``."""
    d = waiting.request.deadline if isinstance(waiting, Waiting) else waiting.deadline
    return d != 0 and now > d


# ---------------------------------------------------------------------------------------
# Trace checker
# ---------------------------------------------------------------------------------------

def _pct(values, q):
    if not values:
        return 0
    return int(np.percentile(np.asarray(values), q, method="higher"))


def _wait_stats(values):
    return {"count": len(values), "max": max(values) if values else 0,
            "p50": _pct(values, 50), "p99": _pct(values, 99),
            "mean": float(np.mean(values)) if values else 0.0}


def _trace_stats(low_waits, high_waits, all_waits, status_counts, n_batches, batched_rows):
    """The statistics of a trace, named like the RTL's counters where they have one."""
    return {
        "wait": {0: low_waits, 1: high_waits, "all": _wait_stats(all_waits)},
        "status_counts": {s.name: status_counts.get(s.name, 0) for s in Status},
        "batches": n_batches,
        "batched_rows": batched_rows,
        "mean_rows_per_batch": batched_rows / n_batches if n_batches else 0.0,
        "accepted": status_counts.get("ACCEPTED", 0),
        "rejected": status_counts.get("REJECTED_FULL", 0) + status_counts.get("REJECTED_INVALID", 0),
        "timed_out": status_counts.get("TIMED_OUT", 0),
        "max_wait": max(all_waits) if all_waits else 0,
        "total_wait": sum(all_waits),
    }


def check_trace(submissions, responses, dispatches, config, queue_depth, dones=None, *,
                scan_slack=0, low_wait_bound=None, high_wait_bound=None, accept_latency=None,
                timeout_latency=None):
    """Check a recorded scheduler trace against the spec's invariants; return statistics.

    All cycles are values of the scheduler's ``now`` (deadlines are absolute in it).

    Parameters
    ----------
    submissions : list of (cycle, Request)
        Each request's admission cycle (its arrival). Ids must be unique in a trace.
    responses : list of (cycle, id, Status)
        In emission order (ties in cycle keep list order).
    dispatches : list of (cycle, batch_tag, program, [(id, rows, address, row_offset), ...])
        ``cycle`` is the decision cycle (the RTL's descriptor ``time``): the wait of a
        member is ``cycle - arrival`` and the deadline check uses it.
    config : Config
    queue_depth : int
    dones : list of (cycle, batch_tag), optional
        The engine's ``done`` events. If given: a tag is not dispatched again before its
        ``done``, every dispatched batch gets one ``done``, and a DONE response comes no
        earlier than its batch's ``done``.
    scan_slack : int
        The RTL removes timed-out requests within a bounded scan period, so a dispatch is
        accepted when ``deadline == 0 or cycle - scan_slack <= deadline``. ``0`` = exact.
    low_wait_bound, high_wait_bound : int, optional
        Assert the max wait (arrival to dispatch) of priority-0 / priority-1 requests.
    accept_latency : int, optional
        Assert the immediate answer (ACCEPTED / REJECTED_*) comes within this many cycles.
    timeout_latency : int, optional
        Assert TIMED_OUT comes within this many cycles after ``max(arrival, deadline) + 1``
        (the first cycle in which an accepted request can be seen past its deadline).

    Checked (AssertionError with a message otherwise)
    -------------------------------------------------
    - every submitted request is answered exactly once by a rejection, or ACCEPTED then
      exactly one of TIMED_OUT / DONE; no response for an unknown id;
    - REJECTED_INVALID iff ``rows == 0``; REJECTED_FULL only when the queue (accepted and
      neither dispatched nor timed out) held ``queue_depth`` requests at that moment, and
      the queue never holds more than ``queue_depth``. Within a cycle the order of
      admission and removals is not fixed by the spec, so both checks are lenient by one
      cycle: a request dispatched (or answered TIMED_OUT) in cycle ``c`` counts as still
      queued for a rejection in ``c``, and as gone for an acceptance in ``c``; a timed-out
      request counts as queued until its TIMED_OUT response for rejections and as gone
      from ``deadline + 1`` for acceptances;
    - only accepted requests are dispatched, no earlier than their admission, at most once,
      with their submitted rows and address, in a batch of their program; row_offsets are
      the running sums; a batch has rows <= max_batch_rows unless it is a single request;
      no member was past its deadline at the decision cycle (minus ``scan_slack``);
    - DONE only for dispatched requests, strictly after the dispatch cycle (and not before
      the batch's ``done`` event); TIMED_OUT only for undispatched requests with a
      deadline, strictly after the deadline;
    - the wait bounds, if given.

    Returns
    -------
    dict with ``wait`` ({0: stats, 1: stats} per priority, stats = count/max/p50/p99/mean,
    and ``all``), ``status_counts`` (by Status name), ``batches``, ``batched_rows``,
    ``mean_rows_per_batch``, and the RTL counter values ``accepted``, ``rejected``,
    ``timed_out``, ``max_wait``, ``total_wait``.
    """
    sub = {}
    order = {}
    for k, (cycle, req) in enumerate(submissions):
        assert req.id not in sub, f"request id {req.id} submitted twice (ids must be unique in a trace)"
        sub[req.id] = (cycle, req)
        order[req.id] = k

    # --- responses per request
    per_id = defaultdict(list)
    for k, (cycle, rid, code) in enumerate(responses):
        assert rid in sub, f"response {Status(code).name} at cycle {cycle} for unknown id {rid}"
        per_id[rid].append((cycle, k, Status(code)))
    status_counts = Counter()
    first_code = {}
    final = {}
    for rid, (scycle, req) in sub.items():
        rs = sorted(per_id.get(rid, []))
        assert rs, f"request {rid} (submitted at cycle {scycle}) was never answered (lost request)"
        codes = [c for _, _, c in rs]
        for c in codes:
            status_counts[c.name] += 1
        first = rs[0]
        assert first[0] >= scycle, f"request {rid}: {first[2].name} at cycle {first[0]} before its submission at {scycle}"
        if accept_latency is not None:
            assert first[0] - scycle <= accept_latency, (
                f"request {rid}: first answer {first[2].name} {first[0] - scycle} cycles after submission "
                f"(> accept_latency {accept_latency})")
        first_code[rid] = first[2]
        if first[2] in (Status.REJECTED_FULL, Status.REJECTED_INVALID):
            assert len(rs) == 1, f"request {rid} rejected ({first[2].name}) but answered again: {[c.name for c in codes]}"
        else:
            assert first[2] == Status.ACCEPTED, (
                f"request {rid}: first answer is {first[2].name}, expected ACCEPTED or a rejection")
            assert len(rs) == 2, (
                f"request {rid}: expected ACCEPTED then exactly one of TIMED_OUT / DONE, got "
                f"{[c.name for c in codes]}" + (" (duplicated answer)" if len(rs) > 2 else " (no final answer)"))
            assert rs[1][2] in (Status.TIMED_OUT, Status.DONE), (
                f"request {rid}: second answer is {rs[1][2].name}, expected TIMED_OUT or DONE")
            final[rid] = (rs[1][0], rs[1][2])
        if req.rows == 0:
            assert first[2] == Status.REJECTED_INVALID, f"request {rid} has rows = 0 but got {first[2].name}"
        else:
            assert first[2] != Status.REJECTED_INVALID, f"request {rid} has rows = {req.rows} but got REJECTED_INVALID"

    # --- dispatches
    dispatched = {}        # id -> (cycle, dispatch index)
    batch_rows_total = 0
    waits = {0: [], 1: []}
    for b, (cycle, tag, program, segments) in enumerate(dispatches):
        assert len(segments) >= 1, f"batch {b} (tag {tag}, cycle {cycle}) is empty"
        offset = 0
        for s, (rid, rows, address, row_offset) in enumerate(segments):
            assert rid in sub, f"batch {b} (cycle {cycle}) dispatches unknown id {rid}"
            scycle, req = sub[rid]
            assert rid not in dispatched, (
                f"request {rid} dispatched twice (batch {dispatched[rid][1]} at cycle {dispatched[rid][0]} "
                f"and batch {b} at cycle {cycle})")
            dispatched[rid] = (cycle, b)
            assert first_code[rid] == Status.ACCEPTED, f"request {rid} dispatched in batch {b} but answered {first_code[rid].name}"
            assert req.program == program, (
                f"batch {b} (cycle {cycle}) mixes programs: batch program {program}, request {rid} is program {req.program}")
            assert rows == req.rows and address == req.address, (
                f"batch {b}: request {rid} segment (rows {rows}, address {address:#x}) differs from the "
                f"submission (rows {req.rows}, address {req.address:#x})")
            assert row_offset == offset, (
                f"batch {b} (cycle {cycle}): segment {s} (request {rid}) has row_offset {row_offset}, expected {offset}")
            offset += rows
            assert cycle >= scycle, f"request {rid} dispatched at cycle {cycle} before its arrival at {scycle}"
            assert req.deadline == 0 or cycle - scan_slack <= req.deadline, (
                f"request {rid} dispatched at cycle {cycle} past its deadline {req.deadline} "
                f"(scan_slack {scan_slack})")
            waits[req.priority].append(cycle - scycle)
        assert len(segments) == 1 or offset <= config.max_batch_rows, (
            f"batch {b} (cycle {cycle}) has {offset} rows > max_batch_rows {config.max_batch_rows} "
            f"with {len(segments)} requests (oversized batch)")
        batch_rows_total += offset

    # --- done events
    done_cycle_of_batch = {}
    if dones is not None:
        events = [(c, 0, k, t) for k, (c, t) in enumerate(dones)]
        events += [(d[0], 1, b, d[1]) for b, d in enumerate(dispatches)]
        # A done in the dispatch cycle of the same tag cannot be for that batch: dones first.
        in_flight = {}
        for c, kind, k, t in sorted(events):
            if kind == 1:
                assert t not in in_flight, (
                    f"batch {k} dispatched at cycle {c} with tag {t} still in flight (batch {in_flight.get(t)})")
                in_flight[t] = k
            else:
                assert t in in_flight, f"done for tag {t} at cycle {c} with no batch of that tag in flight"
                done_cycle_of_batch[in_flight.pop(t)] = c
        assert not in_flight, f"batches {sorted(in_flight.values())} were never answered by the engine"

    # --- final answers
    for rid, (fcycle, code) in final.items():
        scycle, req = sub[rid]
        if code == Status.DONE:
            assert rid in dispatched, f"request {rid} answered DONE at cycle {fcycle} but was never dispatched"
            dcycle, b = dispatched[rid]
            assert fcycle > dcycle, f"request {rid} answered DONE at cycle {fcycle}, not after its dispatch at {dcycle}"
            if b in done_cycle_of_batch:
                assert fcycle >= done_cycle_of_batch[b], (
                    f"request {rid} answered DONE at cycle {fcycle} before its batch's done at {done_cycle_of_batch[b]}")
        else:
            assert rid not in dispatched, f"request {rid} answered TIMED_OUT at cycle {fcycle} but was dispatched"
            assert req.deadline != 0 and fcycle > req.deadline, (
                f"request {rid} answered TIMED_OUT at cycle {fcycle} but its deadline is {req.deadline}")
            if timeout_latency is not None:
                due = max(scycle, req.deadline) + 1
                assert fcycle - due <= timeout_latency, (
                    f"request {rid} answered TIMED_OUT {fcycle - due} cycles after due (> timeout_latency {timeout_latency})")
    for rid in dispatched:
        assert rid in final and final[rid][1] == Status.DONE, f"request {rid} dispatched but not answered DONE"

    # --- queue occupancy
    removal_late, removal_early = [], []
    for rid, (fcycle, code) in final.items():
        scycle, req = sub[rid]
        if code == Status.DONE:
            removal_late.append(dispatched[rid][0])
            removal_early.append(dispatched[rid][0])
        else:
            removal_late.append(fcycle)
            removal_early.append(max(scycle, req.deadline + 1))
    removal_late.sort()
    removal_early.sort()
    accepted_so_far = 0
    for cycle, req in sorted(submissions, key=lambda s: (s[0], order[s[1].id])):
        code = first_code[req.id]
        if code == Status.ACCEPTED:
            accepted_so_far += 1
            held = accepted_so_far - bisect.bisect_right(removal_early, cycle)
            assert held <= queue_depth, (
                f"request {req.id} accepted at cycle {cycle} with the queue already holding "
                f"{held - 1} >= queue_depth {queue_depth} requests")
        elif code == Status.REJECTED_FULL:
            held = accepted_so_far - bisect.bisect_left(removal_late, cycle)
            assert held >= queue_depth, (
                f"request {req.id} REJECTED_FULL at cycle {cycle} but the queue held only {held} "
                f"< queue_depth {queue_depth} requests")

    # --- wait bounds and statistics
    stats_by_prio = {p: _wait_stats(v) for p, v in waits.items()}
    all_waits = waits[0] + waits[1]
    if low_wait_bound is not None:
        assert stats_by_prio[0]["max"] <= low_wait_bound, (
            f"low-priority max wait {stats_by_prio[0]['max']} exceeds the bound {low_wait_bound}")
    if high_wait_bound is not None:
        assert stats_by_prio[1]["max"] <= high_wait_bound, (
            f"high-priority max wait {stats_by_prio[1]['max']} exceeds the bound {high_wait_bound}")
    n_batches = len(dispatches)
    return _trace_stats(stats_by_prio[0], stats_by_prio[1], all_waits, status_counts,
                        n_batches, batch_rows_total)


# ---------------------------------------------------------------------------------------
# Event-driven model
# ---------------------------------------------------------------------------------------

#: Default weight-fetch cost of a batch, in cycles (see :func:`make_engine_cost`).
DEFAULT_FETCH_CYCLES = 256


def make_engine_cost(fetch_cycles=DEFAULT_FETCH_CYCLES, rows_per_cycle=1):
    """Engine cost model: ``fetch_cycles + ceil(total_rows / rows_per_cycle)`` cycles per batch.

    ``fetch_cycles`` is the per-batch fixed cost (streaming the layer's weights into the
    array, shared by all rows of the batch); each row then takes ``1 / rows_per_cycle``
    cycles. The returned function takes the batch (list of :class:`Waiting`).
    """
    def cost(batch):
        rows = sum(w.request.rows for w in batch)
        return fetch_cycles + -(-rows // rows_per_cycle)
    return cost


@dataclass
class SimResult:
    submissions: list = field(default_factory=list)   # (cycle, Request)
    responses: list = field(default_factory=list)     # (cycle, id, Status)
    dispatches: list = field(default_factory=list)    # (cycle, tag, program, [(id, rows, address, row_offset)])
    dones: list = field(default_factory=list)         # (cycle, tag)
    stats: dict = field(default_factory=dict)

    def trace(self):
        return self.submissions, self.responses, self.dispatches


def simulate(arrivals, config, queue_depth, engine_cost=None, *, max_in_flight=1, num_tags=4,
             fetch_cycles=DEFAULT_FETCH_CYCLES):
    """Simulate the scheduler policy with an engine model; return a :class:`SimResult`.

    ``arrivals``: list of (cycle, Request), sorted by cycle (several per cycle allowed,
    admitted in list order). ``engine_cost(batch) -> cycles`` (default
    ``make_engine_cost(fetch_cycles)``: ``fetch_cycles + total_rows``). The engine runs
    batches one at a time in dispatch order; at most ``max_in_flight`` batches are
    dispatched and not done (default 1: one batch in flight); the engine "can take a batch"
    iff fewer than that are in flight. Tags rotate over ``num_tags`` (>= max_in_flight).

    Cycle semantics (within cycle ``t``, in this order):

    1. the batch finishing at ``t`` is done: DONE for its requests (batch order), ``done`` event;
    2. every waiting request with ``deadline != 0 and t > deadline`` is removed, TIMED_OUT;
    3. if the engine can take a batch and a trigger holds (:func:`triggers`, engine idle =
       nothing in flight), :func:`form_batch` over the queue is dispatched at ``t``;
    4. the submissions of cycle ``t`` are answered: REJECTED_INVALID (rows = 0), else
       REJECTED_FULL (``queue_depth`` waiting), else ACCEPTED with arrival ``t`` into the
       lowest free slot. They are first seen by step 3 of cycle ``t + 1``.

    The loop jumps between cycles in which something can change: an arrival, a batch
    completion, a deadline passing, and (while a batch could be taken) the oldest request
    reaching ``max_wait_cycles`` or a low-priority request aging (which can change the head
    and so trigger 1).

    ``stats``: the :func:`check_trace`-style counters plus ``throughput_rows_per_cycle``
    (rows answered DONE / cycles from the first submission to the last DONE),
    ``latency`` (arrival to DONE: count/max/p50/p99/mean), ``cycles``.
    """
    if engine_cost is None:
        engine_cost = make_engine_cost(fetch_cycles)
    assert num_tags >= max_in_flight >= 1
    res = SimResult()
    n = len(arrivals)
    queue = {}                       # slot -> Waiting
    free_slots = list(range(queue_depth))
    heapq.heapify(free_slots)
    in_flight = []                   # [(done_cycle, tag, batch)] in dispatch (= completion) order
    engine_free_at = 0
    next_tag = 0
    latencies = []
    waits = {0: [], 1: []}
    done_rows = 0
    batched_rows = 0
    last_done = 0
    i = 0
    t = arrivals[0][0] if n else 0
    first_cycle = t
    while i < n or queue or in_flight:
        # 1. engine completions
        while in_flight and in_flight[0][0] == t:
            _, tag, batch = in_flight.pop(0)
            res.dones.append((t, tag))
            for w in batch:
                res.responses.append((t, w.request.id, Status.DONE))
                latencies.append(t - w.arrival)
                done_rows += w.request.rows
            last_done = t
        # 2. timeouts
        if queue:
            for slot in [s for s, w in queue.items() if timed_out(w, t)]:
                w = queue.pop(slot)
                heapq.heappush(free_slots, slot)
                res.responses.append((t, w.request.id, Status.TIMED_OUT))
        # 3. dispatch
        can_take = len(in_flight) < max_in_flight
        if can_take and queue:
            waiting = list(queue.values())
            if triggers(waiting, t, config, engine_idle=not in_flight):
                batch = form_batch(waiting, t, config)
                segments, offset = [], 0
                for w in batch:
                    del queue[w.slot]
                    heapq.heappush(free_slots, w.slot)
                    segments.append((w.request.id, w.request.rows, w.request.address, offset))
                    offset += w.request.rows
                    waits[w.request.priority].append(t - w.arrival)
                batched_rows += offset
                tag = next_tag
                next_tag = (next_tag + 1) % num_tags
                res.dispatches.append((t, tag, batch[0].request.program, segments))
                cost = engine_cost(batch)
                assert cost >= 1
                start = max(t, engine_free_at)
                engine_free_at = start + cost
                in_flight.append((engine_free_at, tag, batch))
        # 4. admissions
        admitted = False
        while i < n and arrivals[i][0] == t:
            req = arrivals[i][1]
            res.submissions.append((t, req))
            if req.rows == 0:
                res.responses.append((t, req.id, Status.REJECTED_INVALID))
            elif not free_slots:
                res.responses.append((t, req.id, Status.REJECTED_FULL))
            else:
                slot = heapq.heappop(free_slots)
                queue[slot] = Waiting(req, t, slot)
                res.responses.append((t, req.id, Status.ACCEPTED))
                admitted = True
            i += 1
        if i < n:
            assert arrivals[i][0] > t, "arrivals must be sorted by cycle"
        # next cycle in which anything can change
        cand = []
        if i < n:
            cand.append(arrivals[i][0])
        if in_flight:
            cand.append(in_flight[0][0])
        if queue:
            deadlines = [w.request.deadline + 1 for w in queue.values() if w.request.deadline]
            if deadlines:
                cand.append(min(deadlines))
            if len(in_flight) < max_in_flight:
                if admitted:
                    cand.append(t + 1)
                oldest = min(w.arrival for w in queue.values())
                cand.append(oldest + config.max_wait_cycles)
                agings = [w.arrival + config.aging_cycles for w in queue.values()
                          if w.request.priority == 0 and w.arrival + config.aging_cycles > t]
                if agings:
                    cand.append(min(agings))
        if not cand:
            break
        t = max(t + 1, min(cand))

    n_batches = len(res.dispatches)
    all_waits = waits[0] + waits[1]
    codes = Counter(code.name for _, _, code in res.responses)
    span = max(last_done - first_cycle, 1)
    res.stats = {
        **_trace_stats(_wait_stats(waits[0]), _wait_stats(waits[1]), all_waits, codes,
                       n_batches, batched_rows),
        "latency": _wait_stats(latencies),
        "throughput_rows_per_cycle": done_rows / span,
        "cycles": span,
    }
    return res


# ---------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------

def poisson_arrivals(rate, count, seed=0, program=0, rows=1, start=1):
    """``count`` single-program requests with Bernoulli-per-cycle (discrete Poisson)
    arrivals of mean ``rate`` requests per cycle (``0 < rate <= 1``), one per cycle at most."""
    rng = np.random.default_rng(seed)
    gaps = rng.geometric(min(rate, 1.0), count)
    cycles = start + np.cumsum(gaps) - gaps[0]
    return [(int(c), Request(id=k % (1 << 16), program=program, rows=rows, address=k * 64))
            for k, c in enumerate(cycles)]


def bench_scheduler(results, plot_path, *, count=20_000, sweep_count=4_000, queue_depth=32,
                    fetch_cycles=DEFAULT_FETCH_CYCLES, loads=None, seed=0):
    """Throughput and latency of dynamic batching vs none; writes ``plot_path`` (PNG).

    Cost model: one batch in flight; a batch costs ``fetch_cycles + total_rows`` cycles
    (default ``fetch_cycles = 256``: the weight fetch is paid once per batch, then one row
    per cycle). Traffic: single-row requests of one program, equal (low) priority, no
    deadlines, discrete Poisson arrivals; queue depth ``queue_depth`` (32).

    Modes: batching on = ``Config(max_batch_rows=16, max_wait_cycles=64,
    work_conserving=True)``; off = the same with ``max_batch_rows=1``. ``aging_cycles`` is
    irrelevant (equal priorities).

    Offered load is in requests (= rows) per cycle; the sweep covers ``loads`` x the
    batched capacity ``16 / (fetch_cycles + 16)``. Records

    - ``scheduler.throughput_gain``: rows/cycle on / off at saturating load (offered 2x
      the batched capacity, ``count`` requests each);
    - ``scheduler.p99_wait_cycles``: p99 queue wait (arrival to dispatch) with batching
      on at 70% of the measured batched saturation throughput (``count`` requests);
    - ``scheduler.saturation_rows_per_cycle`` (on / off), ``scheduler.p99_latency_cycles``
      (arrival to DONE, same point as the wait).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on = Config(max_batch_rows=16, max_wait_cycles=64, work_conserving=True, aging_cycles=1 << 20)
    off = dataclasses.replace(on, max_batch_rows=1)
    cost = make_engine_cost(fetch_cycles)
    capacity = 16 / (fetch_cycles + 16)
    if loads is None:
        loads = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0]

    def run(cfg, rate, n, s):
        return simulate(poisson_arrivals(rate, n, seed=s), cfg, queue_depth, cost).stats

    curves = {"on": [], "off": []}
    for k, load in enumerate(loads):
        rate = load * capacity
        for name, cfg in (("on", on), ("off", off)):
            st = run(cfg, rate, sweep_count, seed + k)
            curves[name].append((rate, st["throughput_rows_per_cycle"], st["latency"]["p99"],
                                 st["wait"]["all"]["p99"]))

    sat_rate = 2.0 * capacity
    sat_on = run(on, sat_rate, count, seed + 100)["throughput_rows_per_cycle"]
    sat_off = run(off, sat_rate, count, seed + 100)["throughput_rows_per_cycle"]
    point = run(on, 0.7 * sat_on, count, seed + 200)
    results["scheduler.throughput_gain"] = round(sat_on / sat_off, 3)
    results["scheduler.p99_wait_cycles"] = point["wait"]["all"]["p99"]
    results["scheduler.p99_latency_cycles"] = point["latency"]["p99"]
    results["scheduler.saturation_rows_per_cycle.on"] = round(sat_on, 5)
    results["scheduler.saturation_rows_per_cycle.off"] = round(sat_off, 5)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label, style in (("on", "batching on (max 16 rows)", "o-"), ("off", "batching off (1 row)", "s--")):
        xs = [c[0] for c in curves[name]]
        ax1.plot(xs, [c[1] for c in curves[name]], style, label=label)
        ax2.plot(xs, [c[2] for c in curves[name]], style, label=label)
    ax1.plot(xs, xs, ":", color="grey", label="offered")
    ax1.set_xlabel("offered load (rows / cycle)")
    ax1.set_ylabel("throughput (rows / cycle)")
    ax1.set_title("Throughput")
    ax2.set_xlabel("offered load (rows / cycle)")
    ax2.set_ylabel("p99 latency, arrival to DONE (cycles)")
    ax2.set_yscale("log")
    ax2.set_title("p99 latency (accepted requests)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Scheduler model: batch cost = {fetch_cycles} + rows cycles, queue depth {queue_depth}")
    fig.tight_layout()
    fig.savefig(plot_path, dpi=110)
    plt.close(fig)
    return curves
