"""Serving: requests go to the hardware scheduler in front of the core, which forms the
batches; the host runs each batch's program on the core and reports it done.

The scheduler (``rtl/scheduler.py``) decides *which* requests run together and when
(queueing, priorities, deadlines, first-fit batches per program, its own cycle
counter); the host compiles the program for the batch it was given (selective
batching: the rows of all the batch's requests concatenated for the row-wise and
linear layers) and answers with the batch's tag, which turns into a DONE response
per request. See ``docs/core.md``, "Serving".
"""

from dataclasses import dataclass, field

import numpy as np

from rtl.core.status import Register
from rtl.scheduler import SchedulerRequest, SchedulerResponse, Status, batch_word_layout

from .transport import RunOutcome


__all__ = ["Request", "Batch", "Segment", "Server", "pack_request", "unpack"]


def unpack(layout, value):
    """A ``lib.data`` layout's fields of the integer ``value`` as a dict of ints."""
    fields = {}
    for name, member in layout:
        raw = (value >> member.offset) & ((1 << member.width) - 1)
        shape = member.shape
        if hasattr(shape, "signed") and getattr(shape, "signed", False) and raw >> (member.width - 1):
            raw -= 1 << member.width
        fields[name] = raw
    return fields


def pack_request(id, program, rows, address=0, priority=0, deadline=0):
    """A ``SchedulerRequest`` as an integer."""
    return SchedulerRequest.as_shape().const({
        "id": id, "program": program, "rows": rows, "address": address,
        "priority": priority, "deadline": deadline}).as_value().value


@dataclass
class Request:
    """One request: ``rows`` input rows for ``program``, submitted at cycle ``arrival``."""
    id: int
    program: int
    inputs: np.ndarray
    arrival: int = 0
    priority: int = 0
    deadline: int = 0

    @property
    def rows(self):
        return len(self.inputs)


@dataclass
class Segment:
    id: int
    rows: int
    address: int
    row_offset: int


@dataclass
class Batch:
    tag: int
    program: int
    total_rows: int
    time: int
    segments: list = field(default_factory=list)


class Server:
    """Submits requests at their arrival cycles (relative to the start of :meth:`serve`),
    runs every batch the scheduler forms with ``programs[program](accelerator, batch,
    inputs_by_id) -> {id: result}``, and returns ``({id: result}, {id: final Status},
    [Batch, ...])``."""

    POLL_CYCLES = 4096

    def __init__(self, accelerator, programs, *, max_batch_rows=64, max_wait_cycles=2000,
                 work_conserving=False, aging_cycles=1000):
        self.accelerator = accelerator
        self.transport = accelerator.transport
        self.programs = programs
        for register, value in ((Register.SCHED_MAX_BATCH_ROWS, max_batch_rows),
                                (Register.SCHED_MAX_WAIT_CYCLES, max_wait_cycles),
                                (Register.SCHED_WORK_CONSERVING, int(work_conserving)),
                                (Register.SCHED_AGING_CYCLES, aging_cycles)):
            self.transport.write_register(register, value)
        config = self.transport.config
        self._batch_layout = batch_word_layout(config.sched_queue_depth, config.sched_inflight)

    def serve(self, requests, *, max_cycles=1 << 31):
        requests = sorted(requests, key=lambda r: (r.arrival, r.id))
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        unknown = {r.program for r in requests} - set(self.programs)
        if unknown:
            raise ValueError(f"no program registered for program id(s) {sorted(unknown)}")
        inputs = {r.id: r.inputs for r in requests}
        results, status, batches, words = {}, {}, [], []
        start = now = self.transport.read_register(Register.SCHED_NOW)
        i = 0
        while len(status) < len(requests):
            due = []
            while i < len(requests) and start + requests[i].arrival <= now:
                r = requests[i]
                due.append(pack_request(r.id, r.program, r.rows, 0, r.priority, r.deadline))
                i += 1
            if due:
                self.transport.submit_requests(due)
            budget = start + requests[i].arrival - now if i < len(requests) else self.POLL_CYCLES
            result = self.transport.run(max(budget, 1), until_batch=True)
            self.accelerator.check_outcome(result, allow_timeout=True)
            responses, new_words = self.transport.read_events()
            for value in responses:
                fields = unpack(SchedulerResponse.as_shape(), value)
                if fields["code"] != Status.ACCEPTED.value:
                    status[fields["id"]] = Status(fields["code"])
            words.extend(new_words)
            for batch in self._batches(words):
                batches.append(batch)
                results.update(self.programs[batch.program](self.accelerator, batch, inputs))
                self.transport.complete_batches([batch.tag])
            now = self.transport.read_register(Register.SCHED_NOW)
            if (now - start) & 0xFFFFFFFF > max_cycles:
                raise TimeoutError(f"{len(requests) - len(status)} requests unanswered after "
                                   f"{max_cycles} cycles")
        return results, status, batches

    def _batches(self, words):
        """The complete batches at the front of ``words`` (consumed from it)."""
        out = []
        while words:
            header = unpack(self._batch_layout, words[0])
            if not header["header"]:
                raise RuntimeError("scheduler output out of step: a segment without a header")
            count = header["count"]
            if len(words) < 1 + count:
                break
            segments = []
            for w in words[1:1 + count]:
                f = unpack(self._batch_layout, w)
                segments.append(Segment(f["id"], f["rows"], f["address"], f["row_offset"]))
            out.append(Batch(header["batch"], header["program"], header["total_rows"],
                             header["time"], segments))
            del words[:1 + count]
        return out
