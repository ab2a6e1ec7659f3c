"""Randomized traffic through the scheduler's RTL on Verilator, driven in C++, checked in Python.

:func:`run_traffic` writes the traffic (:func:`make_traffic`: arrival cycles and packed
request words) to a file; the harness (``sim/scheduler_harness/harness.cpp``) clocks the
Verilated :class:`rtl.scheduler.Scheduler` with no Python per cycle: it submits each
request at its arrival (valid held until accepted), takes responses and descriptor words
with random ready, runs an engine model (one batch at a time, a random one of the waiting
batches, done after a random time plus its rows, so batches complete out of order) from a
seeded PRNG, and records every handshake with its cycle and the final counters.
:func:`check_run` then checks the trace: every invariant
(:func:`sim.golden.scheduler.check_trace`), every batch against
:func:`sim.golden.scheduler.form_batch` at its decision time, out-of-order completion,
and every hardware counter against the trace.

Builds are cached under ``build/sim/scheduler-<key>/``, keyed like
:mod:`sim.core_model` (RTL sources, Amaranth version, parameters, harness source,
Verilator and compiler versions, options) and shared between processes by a file lock.
"""

import dataclasses
import json
import subprocess
from functools import cache
from pathlib import Path

from .core_model import VERILOG_BACKEND, compiler_version, rtl_digest
from .golden import scheduler as golden
from .payload import fields_of, pack, payload_width
from .harness_build import build_harness
from .toolchain import verilator_version
from .verilog import component_to_verilog


__all__ = ["build_scheduler_model", "make_traffic", "pack_request", "Trace", "run_traffic",
           "check_run"]

HARNESS = Path(__file__).resolve().parent / "scheduler_harness" / "harness.cpp"
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                  "--x-assign", "fast", "--x-initial", "fast")
#: The per-cycle code at ``-O2`` (Verilator's default is ``-Os``).
MAKE_ARGS = ("OPT_FAST=-O2",)

#: The engine model: a batch takes a uniform 20..240 cycles plus one per row.
ENGINE_CYCLES = (20, 240)
#: Chance (%) that the host takes a response / the engine a descriptor word in a cycle.
READY_PERCENT = (80, 90)


@cache
def build_scheduler_model(queue_depth, max_inflight, *, progress=None):
    """The path of the harness executable for ``Scheduler(queue_depth, max_inflight)``,
    building it if needed (once per design; cached on disk and in the process)."""
    key_material = json.dumps({
        "rtl": rtl_digest(), "queue_depth": queue_depth, "max_inflight": max_inflight,
        "harness": HARNESS.read_text(), "verilog_backend": VERILOG_BACKEND.read_text(),
        "verilator": verilator_version(),
        "compiler": compiler_version(), "args": VERILATOR_ARGS, "make": MAKE_ARGS,
    }, sort_keys=True)

    def write_verilog(build_dir):
        from rtl.scheduler import Scheduler
        path = build_dir / "scheduler.v"
        path.write_text(component_to_verilog(
            Scheduler(queue_depth=queue_depth, max_inflight=max_inflight), "scheduler",
            for_simulation=True))
        return path

    return build_harness("scheduler", key_material, write_verilog, harness=HARNESS,
                         top="scheduler", verilator_args=VERILATOR_ARGS, make_args=MAKE_ARGS,
                         jobs=1, progress=progress)


def make_traffic(rng, count, pattern):
    """``count`` (arrival cycle, Request) pairs from ``rng`` (a :class:`random.Random`):
    ``"steady"`` arrivals near the scheduler's capacity, or ``"bursty"``: bursts of 24 back
    to back (the queue fills), then gaps. Random rows (1 % invalid), programs, priorities
    (30 % high), deadlines (20 % of the requests)."""
    if pattern not in ("steady", "bursty"):
        raise ValueError(f"pattern must be 'steady' or 'bursty', not {pattern!r}")
    traffic, t = [], 20
    for i in range(count):
        if pattern == "bursty":
            t += 1 if (i // 24) % 2 == 0 else rng.randint(1, 400)
        else:
            t += rng.randint(5, 80)
        rows = 0 if rng.random() < 0.01 else rng.choice([1, 1, 1, 2, 3, 4, 8, 13, 17])
        deadline = t + rng.randint(50, 4000) if rng.random() < 0.2 else 0
        request = golden.Request(id=i & 0xFFFF, program=rng.choice([0, 0, 1, 2]), rows=rows,
                                 address=rng.getrandbits(32), priority=int(rng.random() < 0.3),
                                 deadline=deadline)
        traffic.append((t, request))
    return traffic


def pack_request(request):
    """The request port's payload for ``request`` (a :class:`sim.golden.scheduler.Request`)."""
    from rtl.scheduler import SchedulerRequest
    return pack(SchedulerRequest, {"id": [request.id], "program": [request.program],
                                   "rows": [request.rows], "address": [request.address],
                                   "priority": [request.priority],
                                   "deadline": [request.deadline]})[0]


@dataclasses.dataclass
class Trace:
    """What the harness recorded (cycles are the scheduler's ``now``).

    ``dispatches``: (cycle of the last word, tag, program, [(id, rows, address,
    row_offset), ...], decision time from the header); ``counters``: the hardware's
    counters at the end; ``complete``: every request was answered before the limit."""
    submissions: list
    responses: list
    dispatches: list
    dones: list
    counters: dict
    complete: bool
    cycles: int


def _field_map(queue_depth, max_inflight):
    from rtl.scheduler import batch_word_layout
    return {name: (offset, width)
            for name, offset, width, _ in fields_of(batch_word_layout(queue_depth, max_inflight))}


def run_traffic(traffic, config, *, queue_depth, max_inflight, seed, run_dir, cycle_limit=None):
    """Run ``traffic`` through the scheduler on the C++ harness; return the :class:`Trace`.

    ``seed`` seeds the harness's PRNG (ready signals, engine). ``cycle_limit`` (of ``now``)
    defaults to the last arrival plus 400,000 cycles. Files go to ``run_dir``. The descriptor
    words are assembled into batches here (AssertionError on a malformed descriptor)."""
    from rtl.scheduler import SchedulerRequest
    executable = build_scheduler_model(queue_depth, max_inflight)
    fields = _field_map(queue_depth, max_inflight)
    assert fields["header"] == (0, 1) and fields["last"] == (1, 1), "the harness expects these"
    request_bits = payload_width(SchedulerRequest)
    words = (request_bits + 31) // 32
    if cycle_limit is None:
        cycle_limit = traffic[-1][0] + 400_000
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    traffic_path, trace_path = run_dir / "traffic.txt", run_dir / "trace.txt"
    lines = [f"seed {seed}",
             f"config {config.max_batch_rows} {config.max_wait_cycles} "
             f"{int(config.work_conserving)} {config.aging_cycles}",
             f"ready {READY_PERCENT[0]} {READY_PERCENT[1]}",
             f"engine {ENGINE_CYCLES[0]} {ENGINE_CYCLES[1]}",
             "batch_fields {} {} {} {}".format(*fields["batch"], *fields["total_rows"]),
             f"request_bits {request_bits}", f"limit {cycle_limit}", f"requests {len(traffic)}"]
    for arrival, request in traffic:
        value = pack_request(request)
        lines.append(f"{arrival} " + " ".join(f"{(value >> (32 * k)) & 0xFFFFFFFF:x}"
                                               for k in range(words)))
    traffic_path.write_text("\n".join(lines) + "\n")
    result = subprocess.run([str(executable), str(traffic_path), str(trace_path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the scheduler harness failed ({result.returncode}): "
                           f"{result.stderr.strip()}")

    def word_field(value, name):
        offset, width = fields[name]
        return (value >> offset) & ((1 << width) - 1)

    submissions, responses, dispatches, dones, counters = [], [], [], [], {}
    current, end = None, None
    for line in trace_path.read_text().splitlines():
        kind, a, b = line.split()
        if kind == "S":
            submissions.append((int(a), traffic[int(b)][1]))
        elif kind == "R":
            value = int(b, 16)
            responses.append((int(a), value & 0xFFFF, golden.Status((value >> 16) & 0x7)))
        elif kind == "B":
            value = int(b, 16)
            word = {name: word_field(value, name) for name in fields}
            if word["header"]:
                assert current is None, f"header inside a batch at cycle {a}"
                current = dict(word, segments=[])
            else:
                assert current is not None, f"segment without a header at cycle {a}"
                current["segments"].append((word["id"], word["rows"], word["address"],
                                            word["row_offset"]))
                if word["last"]:
                    assert len(current["segments"]) == current["count"], (
                        f"segment count at cycle {a}: {len(current['segments'])} segments, "
                        f"header says {current['count']}")
                    dispatches.append((int(a), current["batch"], current["program"],
                                       current["segments"], current["time"]))
                    current = None
        elif kind == "D":
            dones.append((int(a), int(b)))
        elif kind == "C":
            counters[a] = int(b)
        elif kind == "E":
            end = (a == "complete", int(b))
    if end is None:
        raise RuntimeError(f"the scheduler harness wrote an incomplete trace ({trace_path})")
    return Trace(submissions, responses, dispatches, dones, counters, complete=end[0],
                 cycles=end[1])


def check_run(trace, traffic, config, queue_depth):
    """Every check of a randomized run; returns :func:`check_trace`'s statistics.

    The run completed (every request answered before the cycle limit); every invariant
    (:func:`sim.golden.scheduler.check_trace`, with the engine's ``done`` events); batches
    completed out of dispatch order at least once; every batch equals
    :func:`sim.golden.scheduler.form_batch` applied to the queue at the batch's decision
    time (accepted, not yet dispatched, arrived by then, not past its deadline); and every
    hardware counter equals its value computed from the trace."""
    answered = sum(code != golden.Status.ACCEPTED for _, _, code in trace.responses)
    assert trace.complete, (f"timed out at cycle {trace.cycles}: {answered} of {len(traffic)} "
                            f"requests answered, {len(trace.dispatches)} batches")
    stats = golden.check_trace(trace.submissions, trace.responses,
                               [(decided, tag, prog, segs)
                                for _, tag, prog, segs, decided in trace.dispatches],
                               config, queue_depth, trace.dones)
    # Batches completed out of dispatch order at least once.
    done_order = [tag for _, tag in trace.dones]
    dispatch_order = [tag for _, tag, *_ in trace.dispatches]
    assert done_order != dispatch_order[:len(done_order)], "no out-of-order completion exercised"

    # Every decision, against the reference policy at the decision time. `queued` holds the
    # accepted requests not yet dispatched, by arrival (those that timed out stay: they
    # are left out by their deadline, as in the specification).
    arrivals = {request.id: cycle for cycle, request in trace.submissions}
    requests_by_id = {request.id: request for _, request in trace.submissions}
    queued = sorted((i for _, i, code in trace.responses if code == golden.Status.ACCEPTED),
                    key=lambda i: arrivals[i])
    for _, _, program, segments, decided in trace.dispatches:
        waiting = []
        for i in queued:
            if arrivals[i] > decided:
                break
            request = requests_by_id[i]
            if not (request.deadline and decided > request.deadline):
                waiting.append(golden.Waiting(request=request, arrival=arrivals[i], slot=0))
        expected = [w.request.id for w in golden.form_batch(waiting, decided, config)]
        got = [seg[0] for seg in segments]
        assert got == expected, f"batch decided at {decided}: got {got}, policy says {expected}"
        members = set(got)
        queued = [i for i in queued if i not in members]

    # The hardware's counters agree with the trace.
    codes = [code for _, _, code in trace.responses]
    waits = [decided - arrivals[s[0]] for *_, segs, decided in trace.dispatches for s in segs]
    expected = {
        "accepted": codes.count(golden.Status.ACCEPTED),
        "rejected": (codes.count(golden.Status.REJECTED_FULL)
                     + codes.count(golden.Status.REJECTED_INVALID)),
        "timed_out": codes.count(golden.Status.TIMED_OUT),
        "batches": len(trace.dispatches),
        "batched_rows": sum(s[1] for d in trace.dispatches for s in d[3]),
        "total_wait": sum(waits),
        "max_wait": max(waits, default=0),
        "bad_done": 0,
    }
    for name, value in expected.items():
        assert trace.counters[name] == value, (
            f"counter {name} = {trace.counters[name]}, the trace says {value}")
    return stats
