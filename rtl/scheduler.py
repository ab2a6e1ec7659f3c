"""Dynamic-batching request scheduler (specification: ``docs/scheduler.md``)."""

from amaranth.hdl import Array, Assert, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["Status", "SchedulerRequest", "SchedulerResponse", "batch_word_layout", "Scheduler"]


class Status(enum.Enum, shape=3):
    ACCEPTED = 0
    REJECTED_FULL = 1
    REJECTED_INVALID = 2
    TIMED_OUT = 3
    DONE = 4


class SchedulerRequest(data.Struct):
    id: 16
    program: 8
    rows: 12
    address: 32
    priority: 1
    deadline: 32


class SchedulerResponse(data.Struct):
    id: 16
    code: Status


def batch_word_layout(queue_depth, max_inflight):
    """One word of a batch descriptor: a header (``header`` set) or a segment.

    Header fields: ``batch`` (in-flight tag), ``program``, ``count`` (segments),
    ``total_rows``, ``time`` (the cycle the batch was decided at). Segment fields:
    ``id``, ``rows``, ``address``, ``row_offset``. ``last`` marks the final word.
    """
    return data.StructLayout({
        "header": 1,
        "last": 1,
        "batch": range(max_inflight),
        "program": 8,
        "count": range(queue_depth + 1),
        "total_rows": 24,
        "time": 32,
        "id": 16,
        "rows": 12,
        "address": 32,
        "row_offset": 24,
    })


_ENTRY = data.StructLayout({
    "request": SchedulerRequest,
    "arrival": 32,
})


class Scheduler(wiring.Component):
    """Queue requests, form batches of the same program, answer every request once.

    The policy is in ``docs/scheduler.md``; the reference model is
    ``sim/golden/scheduler.py``.

    Structure: the queue is ``queue_depth`` registers with a valid bit each.
    Admission (``req``) answers at once: ACCEPTED into a free slot, or
    REJECTED_FULL / REJECTED_INVALID. A controller loops over the queue one slot
    per cycle:

    - **scan**: time out waiting requests past their deadline (TIMED_OUT), find
      the head (the best request) and the oldest arrival;
    - **sum**: add up the rows of the head's program and evaluate the dispatch
      triggers (rows >= ``max_batch_rows``, oldest wait >= ``max_wait_cycles``,
      ``work_conserving`` and nothing in flight). If none holds, or no batch tag
      is free, scan again;
    - **form**: with admission paused and the time latched, pick the best
      remaining request of the program, one pass per pick; add it if it fits
      (first fit; the head always); stop when none remains;
    - **dispatch**: send the header and the segments on ``batch``, free the
      slots, remember the batch's ids under its tag.

    ``done`` (a batch tag) answers DONE for every request of that batch. A tag
    that is not in flight is ignored and counted in ``bad_done``.

    Each pass takes ``queue_depth`` cycles, so a decision takes about
    (3 + requests in the batch) x ``queue_depth`` cycles, and a timeout is
    answered within two passes.

    Parameters
    ----------
    queue_depth : int
        Requests the queue holds (e.g. 64).
    max_inflight : int
        Batches dispatched and not yet done.
    properties : bool
        Add the formal properties (``Assert``) checked by ``tests/test_scheduler.py``
        with SymbiYosys: every queued request is accounted for
        (``waiting == accepted - timed_out - dispatched``), an accepted request
        never takes an occupied slot, a dispatched slot holds a request (so no
        request is dispatched twice), and ``age`` (per slot, the cycles since its
        request was accepted) is exposed for wait-bound properties. Off for
        simulation and synthesis.
    """

    #: Cycles from a request's transfer to its ACCEPTED / REJECTED response.
    latency = 1

    def __init__(self, *, queue_depth=64, max_inflight=4, properties=False):
        for name, value in (("Queue depth", queue_depth), ("In-flight batch count", max_inflight)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        self._depth = queue_depth
        self._inflight = max_inflight
        self._properties = bool(properties)
        formal_ports = {}
        if self._properties:
            formal_ports = {
                "dispatched": Out(32),
                "ages": Out(data.ArrayLayout(32, queue_depth)),
                "occupied": Out(queue_depth),
            }
        super().__init__({
            **formal_ports,
            "req": In(stream.Signature(SchedulerRequest)),
            "resp": Out(stream.Signature(SchedulerResponse)),
            "batch": Out(stream.Signature(batch_word_layout(queue_depth, max_inflight))),
            "done": In(stream.Signature(range(max_inflight))),
            # configuration
            "max_batch_rows": In(12),
            "max_wait_cycles": In(32),
            "work_conserving": In(1),
            "aging_cycles": In(32),
            # time and counters
            "now": Out(32),
            "accepted": Out(32),
            "rejected": Out(32),
            "timed_out": Out(32),
            "batches": Out(32),
            "batched_rows": Out(32),
            "max_wait": Out(32),
            "total_wait": Out(48),
            "bad_done": Out(16),
            "waiting": Out(range(queue_depth + 1)),
        })

    queue_depth = property(lambda self: self._depth)
    max_inflight = property(lambda self: self._inflight)

    def elaborate(self, platform):
        m = Module()
        depth, inflight = self._depth, self._inflight

        m.d.sync += self.now.eq(self.now + 1)
        now = self.now

        entries = Array(Signal(_ENTRY, name=f"entry_{i}") for i in range(depth))
        valid = Signal(depth)
        m.d.comb += self.waiting.eq(sum(valid[i] for i in range(depth)))
        set_valid = Signal(depth)
        clear_valid = Signal(depth)
        m.d.sync += valid.eq((valid | set_valid) & ~clear_valid)

        # -- responses: one register, three sources (done > timeout > admission) -----------
        resp_free = ~self.resp.valid | self.resp.ready
        with m.If(self.resp.valid & self.resp.ready):
            m.d.sync += self.resp.valid.eq(0)
        done_wants = Signal()
        timeout_wants = Signal()
        done_gets = Signal()
        timeout_gets = Signal()
        admit_gets = Signal()
        m.d.comb += [
            done_gets.eq(resp_free & done_wants),
            timeout_gets.eq(resp_free & ~done_wants & timeout_wants),
        ]

        # -- admission -----------------------------------------------------------------------
        admission_open = Signal()
        free_slot = Signal(range(depth))
        any_free = Signal()
        for i in reversed(range(depth)):
            with m.If(~valid[i]):
                m.d.comb += [free_slot.eq(i), any_free.eq(1)]
        m.d.comb += [
            admit_gets.eq(resp_free & ~done_wants & ~timeout_wants),
            self.req.ready.eq(admit_gets & admission_open),
        ]
        req = self.req.payload
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [self.resp.valid.eq(1), self.resp.payload.id.eq(req.id)]
            with m.If(req.rows == 0):
                m.d.sync += [self.resp.payload.code.eq(Status.REJECTED_INVALID),
                             self.rejected.eq(self.rejected + 1)]
            with m.Elif(~any_free):
                m.d.sync += [self.resp.payload.code.eq(Status.REJECTED_FULL),
                             self.rejected.eq(self.rejected + 1)]
            with m.Else():
                m.d.sync += [self.resp.payload.code.eq(Status.ACCEPTED),
                             self.accepted.eq(self.accepted + 1),
                             entries[free_slot].request.eq(req),
                             entries[free_slot].arrival.eq(now)]
                m.d.comb += set_valid.eq(1 << free_slot)
                if self._properties:
                    m.d.comb += Assert(~valid.bit_select(free_slot, 1),
                                       "an accepted request takes a free slot")

        # -- in-flight batches: ids per tag -------------------------------------------------
        batch_ids = Array(Array(Signal(16, name=f"batch_{t}_id_{k}") for k in range(depth))
                          for t in range(inflight))
        batch_count = Array(Signal(range(depth + 1), name=f"batch_{t}_count") for t in range(inflight))
        batch_busy = Signal(inflight)
        free_tag = Signal(range(inflight))
        any_tag = Signal()
        for t in reversed(range(inflight)):
            with m.If(~batch_busy[t]):
                m.d.comb += [free_tag.eq(t), any_tag.eq(1)]
        set_busy = Signal(inflight)
        clear_busy = Signal(inflight)
        m.d.sync += batch_busy.eq((batch_busy | set_busy) & ~clear_busy)

        # done: drain one DONE response per cycle for the tag being answered
        draining = Signal()
        drain_tag = Signal(range(inflight))
        drain_index = Signal(range(depth + 1))
        m.d.comb += self.done.ready.eq(~draining)
        with m.If(self.done.valid & ~draining):
            with m.If(batch_busy.bit_select(self.done.payload, 1) & (self.done.payload < inflight)):
                m.d.sync += [draining.eq(1), drain_tag.eq(self.done.payload), drain_index.eq(0)]
            with m.Else():
                m.d.sync += self.bad_done.eq(self.bad_done + 1)
        m.d.comb += done_wants.eq(draining & (drain_index < batch_count[drain_tag]))
        with m.If(draining & ~done_wants):
            m.d.sync += draining.eq(0)
            m.d.comb += clear_busy.eq(1 << drain_tag)
        with m.If(done_gets):
            m.d.sync += [
                self.resp.valid.eq(1),
                self.resp.payload.id.eq(batch_ids[drain_tag][drain_index]),
                self.resp.payload.code.eq(Status.DONE),
                drain_index.eq(drain_index + 1),
            ]

        # -- the controller ------------------------------------------------------------------
        index = Signal(range(depth))
        last_index = index == depth - 1
        entry = entries[index]
        slot_valid = valid.bit_select(index, 1)
        decision_time = Signal(32)
        best_slot = Signal(range(depth))
        best_found = Signal()
        best_high = Signal()
        best_arrival = Signal(32)
        oldest_found = Signal()
        oldest_arrival = Signal(32)
        head_program = Signal(8)
        program_rows = Signal(24)
        batch_rows = Signal(24)
        member_slots = Array(Signal(range(depth), name=f"member_{k}") for k in range(depth))
        member_count = Signal(range(depth + 1))
        considered = Signal(depth)      # in the batch, or skipped (did not fit)
        segment = Signal(range(depth + 1))
        offset = Signal(24)
        tag = Signal(range(inflight))
        first_pass = Signal()

        def wait_of(e, t):
            return (t - e.arrival)[:32]

        def high(e, t):
            return e.request.priority | (wait_of(e, t) >= self.aging_cycles)

        def better(e_high, e_arrival):
            """Is the entry (e_high, e_arrival) at a higher slot better than the best so far?"""
            return ~best_found | (e_high & ~best_high) | (
                (e_high == best_high) & (e_arrival < best_arrival))

        with m.FSM(name="control"):
            with m.State("SCAN"):
                m.d.comb += admission_open.eq(1)
                expired = (slot_valid & (entry.request.deadline != 0) & (now > entry.request.deadline))
                m.d.comb += timeout_wants.eq(expired)
                with m.If(timeout_gets):
                    m.d.sync += [
                        self.resp.valid.eq(1),
                        self.resp.payload.id.eq(entry.request.id),
                        self.resp.payload.code.eq(Status.TIMED_OUT),
                        self.timed_out.eq(self.timed_out + 1),
                    ]
                    m.d.comb += clear_valid.eq(1 << index)
                advance = ~expired | timeout_gets
                with m.If(advance):
                    with m.If(slot_valid & ~expired):
                        e_high = high(entry, now)
                        with m.If(better(e_high, entry.arrival)):
                            m.d.sync += [best_found.eq(1), best_slot.eq(index),
                                         best_high.eq(e_high), best_arrival.eq(entry.arrival)]
                        with m.If(~oldest_found | (entry.arrival < oldest_arrival)):
                            m.d.sync += [oldest_found.eq(1), oldest_arrival.eq(entry.arrival)]
                    m.d.sync += index.eq(Mux(last_index, 0, index + 1))
                    with m.If(last_index):
                        m.d.sync += program_rows.eq(0)
                        # The last slot's own verdict is registered this cycle; read it next.
                        m.next = "SCAN_END"

            with m.State("SCAN_END"):
                m.d.comb += admission_open.eq(1)
                m.d.sync += head_program.eq(entries[best_slot].request.program)
                with m.If(best_found):
                    m.next = "SUM"
                with m.Else():
                    m.d.sync += [oldest_found.eq(0)]
                    m.next = "SCAN"

            with m.State("SUM"):
                m.d.comb += admission_open.eq(1)
                with m.If(slot_valid & (entry.request.program == head_program)):
                    m.d.sync += program_rows.eq(program_rows + entry.request.rows)
                m.d.sync += index.eq(Mux(last_index, 0, index + 1))
                with m.If(last_index):
                    m.next = "DECIDE"

            with m.State("DECIDE"):
                m.d.comb += admission_open.eq(1)
                rows_trigger = program_rows >= self.max_batch_rows
                wait_trigger = (now - oldest_arrival)[:32] >= self.max_wait_cycles
                idle_trigger = self.work_conserving & (batch_busy == 0)
                still_there = valid.bit_select(best_slot, 1)
                with m.If(any_tag & still_there & (rows_trigger | wait_trigger | idle_trigger)):
                    m.d.sync += [
                        decision_time.eq(now),
                        best_found.eq(0),
                        member_count.eq(0),
                        batch_rows.eq(0),
                        considered.eq(0),
                        index.eq(0),
                        tag.eq(free_tag),
                        first_pass.eq(1),
                    ]
                    m.next = "FORM"
                with m.Else():
                    m.d.sync += [best_found.eq(0), oldest_found.eq(0), index.eq(0)]
                    m.next = "SCAN"

            with m.State("FORM"):
                # One pass finds the best remaining candidate: in the first pass of any
                # program (the head, at the decision time), then of the head's program.
                # Requests already past their deadline are left for the next scan.
                expired_at_decision = ((entry.request.deadline != 0) &
                                       (decision_time > entry.request.deadline))
                candidate = (slot_valid & ~considered.bit_select(index, 1) & ~expired_at_decision &
                             (first_pass | (entry.request.program == head_program)))
                with m.If(candidate):
                    e_high = high(entry, decision_time)
                    with m.If(better(e_high, entry.arrival)):
                        m.d.sync += [best_found.eq(1), best_slot.eq(index),
                                     best_high.eq(e_high), best_arrival.eq(entry.arrival)]
                m.d.sync += index.eq(Mux(last_index, 0, index + 1))
                with m.If(last_index):
                    m.next = "PICK"

            with m.State("PICK"):
                picked = entries[best_slot]
                fits = (member_count == 0) | (batch_rows + picked.request.rows <= self.max_batch_rows)
                with m.If(best_found):
                    m.d.sync += [considered.eq(considered | (1 << best_slot)), best_found.eq(0),
                                 first_pass.eq(0)]
                    with m.If(first_pass):
                        m.d.sync += head_program.eq(picked.request.program)
                    with m.If(fits):
                        m.d.sync += [
                            member_slots[member_count].eq(best_slot),
                            member_count.eq(member_count + 1),
                            batch_rows.eq(batch_rows + picked.request.rows),
                        ]
                    m.next = "FORM"
                with m.Elif(first_pass):
                    # Nothing left to dispatch (every request expired): scan again.
                    m.d.sync += [oldest_found.eq(0), index.eq(0)]
                    m.next = "SCAN"
                with m.Else():
                    m.d.sync += [segment.eq(0), offset.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                word = self.batch.payload
                m.d.comb += [
                    self.batch.valid.eq(1),
                    word.header.eq(1),
                    word.batch.eq(tag),
                    word.program.eq(head_program),
                    word.count.eq(member_count),
                    word.total_rows.eq(batch_rows),
                    word.time.eq(decision_time),
                ]
                with m.If(self.batch.ready):
                    m.d.sync += [
                        batch_count[tag].eq(member_count),
                        self.batches.eq(self.batches + 1),
                        self.batched_rows.eq(self.batched_rows + batch_rows),
                    ]
                    m.next = "SEGMENTS"

            with m.State("SEGMENTS"):
                slot = member_slots[segment]
                member = entries[slot]
                word = self.batch.payload
                waited = wait_of(member, decision_time)
                m.d.comb += [
                    self.batch.valid.eq(1),
                    word.batch.eq(tag),
                    word.program.eq(head_program),
                    word.id.eq(member.request.id),
                    word.rows.eq(member.request.rows),
                    word.address.eq(member.request.address),
                    word.row_offset.eq(offset),
                    word.last.eq(segment == member_count - 1),
                    word.time.eq(decision_time),
                ]
                with m.If(self.batch.ready):
                    m.d.sync += [
                        batch_ids[tag][segment].eq(member.request.id),
                        segment.eq(segment + 1),
                        offset.eq(offset + member.request.rows),
                        self.total_wait.eq(self.total_wait + waited),
                    ]
                    with m.If(waited > self.max_wait):
                        m.d.sync += self.max_wait.eq(waited)
                    m.d.comb += clear_valid.eq(1 << slot)
                    if self._properties:
                        m.d.sync += self.dispatched.eq(self.dispatched + 1)
                        m.d.comb += Assert(valid.bit_select(slot, 1),
                                           "a dispatched slot holds a request")
                    with m.If(segment == member_count - 1):
                        # In flight from its last word on: a `done` for it is valid now.
                        m.d.comb += set_busy.eq(1 << tag)
                        m.d.sync += [best_found.eq(0), oldest_found.eq(0), index.eq(0)]
                        m.next = "SCAN"
        if self._properties:
            m.d.comb += [
                self.occupied.eq(valid),
                Assert(self.waiting == self.accepted - self.timed_out - self.dispatched,
                       "every queued request is accounted for"),
                Assert(self.accepted - self.timed_out >= self.dispatched),
            ]
            for i in range(depth):
                with m.If(set_valid[i]):
                    m.d.sync += self.ages[i].eq(0)
                with m.Elif(valid[i] & (self.ages[i] != 0xFFFFFFFF)):
                    m.d.sync += self.ages[i].eq(self.ages[i] + 1)
        return m
