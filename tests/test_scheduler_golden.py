"""Reference model of the dynamic-batching scheduler (``sim/golden/scheduler.py``).

Hand-built queues check the decision functions against ``docs/scheduler.md`` (head
selection, first-fit formation, triggers, timeouts); :func:`simulate` on random traffic
must pass :func:`check_trace`; and :func:`check_trace` must catch corrupted traces.
"""

import copy
import dataclasses

import numpy as np
import pytest

from sim.golden import scheduler as sch
from sim.golden.scheduler import Config, Request, Status, Waiting


def W(id, arrival, slot, *, program=0, rows=1, priority=0, deadline=0):
    return Waiting(Request(id=id, program=program, rows=rows, address=0x1000 * id, priority=priority,
                           deadline=deadline), arrival, slot)


CFG = Config(max_batch_rows=16, max_wait_cycles=100, work_conserving=False, aging_cycles=50)


# -- head selection ----------------------------------------------------------------------------

def test_head_prefers_high_priority_over_earlier_low():
    q = [W(1, arrival=10, slot=0), W(2, arrival=20, slot=1, priority=1)]
    assert sch.head(q, 30, CFG).request.id == 2


def test_head_aging_makes_low_priority_effectively_high():
    q = [W(1, arrival=10, slot=0), W(2, arrival=20, slot=1, priority=1)]
    # At now = 59 request 1 has waited 49 < 50: still low.
    assert not sch.effectively_high(q[0], 59, CFG)
    assert sch.head(q, 59, CFG).request.id == 2
    # At now = 60 it has waited exactly aging_cycles: effectively high, and earlier.
    assert sch.effectively_high(q[0], 60, CFG)
    assert sch.head(q, 60, CFG).request.id == 1


def test_head_earlier_arrival_then_lower_slot():
    q = [W(1, arrival=12, slot=0), W(2, arrival=11, slot=5), W(3, arrival=11, slot=3)]
    assert sch.head(q, 20, CFG).request.id == 3
    assert [w.request.id for w in sch.ordered(q, 20, CFG)] == [3, 2, 1]
    assert sch.order_key(q[2], 20, CFG) == (1, 11, 3)
    assert sch.head([], 0, CFG) is None


def test_head_high_priority_ties_by_arrival_not_by_native_priority():
    # An aged low request that arrived earlier beats a native high one that arrived later.
    q = [W(1, arrival=30, slot=0, priority=1), W(2, arrival=0, slot=1)]
    assert sch.head(q, 49, CFG).request.id == 1
    assert sch.head(q, 50, CFG).request.id == 2


# -- batch formation ---------------------------------------------------------------------------

def ids(batch):
    return [w.request.id for w in batch]


def test_first_fit_skips_a_request_that_does_not_fit_and_takes_a_later_smaller_one():
    q = [W(1, 0, 0, rows=10), W(2, 1, 1, rows=8), W(3, 2, 2, rows=6), W(4, 3, 3, rows=1)]
    # 10 + 8 > 16: skip 2; 10 + 6 = 16 fits; then 16 + 1 > 16: skip 4.
    assert ids(sch.form_batch(q, 10, CFG)) == [1, 3]
    q = [W(1, 0, 0, rows=10), W(2, 1, 1, rows=8), W(3, 2, 2, rows=5), W(4, 3, 3, rows=1)]
    assert ids(sch.form_batch(q, 10, CFG)) == [1, 3, 4]


def test_oversized_head_forms_a_batch_alone():
    q = [W(1, 0, 0, rows=40), W(2, 1, 1, rows=1), W(3, 2, 2, rows=1)]
    assert ids(sch.form_batch(q, 10, CFG)) == [1]


def test_other_programs_never_included_and_order_is_best_first():
    q = [W(1, 5, 0, program=3, rows=2), W(2, 0, 1, program=4, rows=1), W(3, 1, 2, program=3, rows=2),
         W(4, 2, 3, program=3, rows=2, priority=1), W(5, 3, 4, program=4, rows=1, priority=1)]
    # Head: the earliest effectively-high request (4 at arrival 2 beats 5 at arrival 3).
    batch = sch.form_batch(q, 10, CFG)
    assert ids(batch) == [4, 3, 1]
    assert all(w.request.program == 3 for w in batch)
    assert sch.form_batch([], 10, CFG) == []


def test_head_is_from_aged_request_program():
    q = [W(1, 0, 0, program=1), W(2, 40, 1, program=2, priority=1), W(3, 45, 2, program=2)]
    assert ids(sch.form_batch(q, 49, CFG)) == [2, 3]
    assert ids(sch.form_batch(q, 50, CFG)) == [1]


# -- triggers ----------------------------------------------------------------------------------

def test_trigger_rows_of_the_heads_program():
    q = [W(1, 0, 0, program=1, rows=10, priority=1), W(2, 1, 1, program=1, rows=10), W(3, 2, 2, program=2, rows=20)]
    # Program 1 (the head's) has 20 >= 16 rows in total, though only 10 fit in a batch.
    assert sch.trigger_reasons(q, 5, CFG, engine_idle=False) == (1,)
    # Without request 2 the head's program has 10 rows; program 2's 20 rows do not count.
    assert sch.trigger_reasons([q[0], q[2]], 5, CFG, engine_idle=False) == ()
    assert not sch.triggers([q[0], q[2]], 5, CFG, engine_idle=False)


def test_trigger_oldest_wait():
    # The oldest (request 2, low priority, other program) drives trigger 2, not the head.
    q = [W(1, 50, 0, program=1, priority=1), W(2, 10, 1, program=2)]
    cfg = dataclasses.replace(CFG, aging_cycles=1000)
    assert sch.trigger_reasons(q, 109, cfg, engine_idle=False) == ()
    assert sch.trigger_reasons(q, 110, cfg, engine_idle=False) == (2,)
    assert sch.head(q, 110, cfg).request.id == 1


def test_trigger_work_conserving_needs_idle_engine_and_flag():
    q = [W(1, 0, 0)]
    assert sch.trigger_reasons(q, 1, CFG, engine_idle=True) == ()
    wc = dataclasses.replace(CFG, work_conserving=True)
    assert sch.trigger_reasons(q, 1, wc, engine_idle=True) == (3,)
    assert sch.trigger_reasons(q, 1, wc, engine_idle=False) == ()
    assert sch.trigger_reasons([], 1000, wc, engine_idle=True) == ()


def test_all_triggers_at_once():
    q = [W(1, 0, 0, rows=16)]
    wc = dataclasses.replace(CFG, work_conserving=True)
    assert sch.trigger_reasons(q, 100, wc, engine_idle=True) == (1, 2, 3)


# -- timeouts ----------------------------------------------------------------------------------

def test_timeouts():
    assert not sch.timed_out(W(1, 0, 0, deadline=0), 10**9)
    w = W(1, 0, 0, deadline=100)
    assert not sch.timed_out(w, 99)
    assert not sch.timed_out(w, 100)
    assert sch.timed_out(w, 101)


def test_simulate_small_scenario_exact():
    """Work conserving off: a lone request waits max_wait_cycles; a full program goes at once;
    a request past its deadline times out; rows = 0 is invalid; a full queue rejects."""
    cfg = Config(max_batch_rows=4, max_wait_cycles=10, work_conserving=False, aging_cycles=1000)
    arr = [(0, Request(1, 0, 1)), (1, Request(2, 0, 0)),
           (100, Request(3, 0, 2)), (101, Request(4, 0, 2)),
           (200, Request(5, 1, 1, deadline=205)), (201, Request(6, 2, 1)), (202, Request(7, 2, 1)),
           (203, Request(8, 2, 1))]
    res = sch.simulate(arr, cfg, queue_depth=2, engine_cost=lambda b: 5)
    d = {seg[0]: (c, tag, prog) for c, tag, prog, segs in res.dispatches for seg in segs}
    assert d[1][0] == 10                      # waited max_wait_cycles (trigger 2)
    assert d[3][0] == d[4][0] == 102          # 4 rows of program 0 (trigger 1), seen a cycle after arrival
    codes = {(rid, code) for _, rid, code in res.responses}
    assert (2, Status.REJECTED_INVALID) in codes
    # Queue depth 2: 5 and 6 fill it, 7 and 8 are rejected; nothing triggers before 5's
    # deadline passes (at 206, 5 has waited 6 < 10).
    assert (7, Status.REJECTED_FULL) in codes and (8, Status.REJECTED_FULL) in codes
    assert (5, Status.TIMED_OUT) in codes and 5 not in d
    assert d[6][0] == 211                     # 6 (arrival 201) waited 10
    sch.check_trace(res.submissions, res.responses, res.dispatches, cfg, 2, res.dones)


# -- simulate on random traffic passes check_trace ---------------------------------------------

def random_traffic(seed, count, bursty):
    rng = np.random.default_rng(seed)
    if bursty:
        # Bursts of back-to-back requests separated by long gaps.
        gaps = np.where(rng.random(count) < 0.05, rng.integers(200, 3000, count), 1)
    else:
        gaps = rng.geometric(0.03, count)
    cycles = 1 + np.cumsum(gaps)
    rows = np.where(rng.random(count) < 0.05, rng.integers(17, 60, count), rng.integers(1, 9, count))
    rows[rng.random(count) < 0.01] = 0
    programs = rng.integers(0, 3, count)
    prios = (rng.random(count) < 0.3).astype(int)
    has_deadline = rng.random(count) < 0.3
    deadlines = np.where(has_deadline, cycles + rng.integers(-5, 1500, count), 0)
    deadlines = np.maximum(deadlines, 0)
    return [(int(c), Request(id=k, program=int(p), rows=int(r), address=int(k * 128), priority=int(pr),
                             deadline=int(d)))
            for k, (c, p, r, pr, d) in enumerate(zip(cycles, programs, rows, prios, deadlines))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bursty", [False, True], ids=["steady", "bursty"])
def test_simulate_random_traffic_passes_check_trace(seed, bursty):
    depth = 32
    rng = np.random.default_rng(100 + seed)
    cfg = Config(max_batch_rows=int(rng.choice([8, 16, 32])), max_wait_cycles=int(rng.integers(0, 200)),
                 work_conserving=bool(seed != 1), aging_cycles=int(rng.integers(100, 2000)))
    in_flight = 1 if seed == 0 else 4
    fetch = 64
    arrivals = random_traffic(seed, 12_000, bursty)
    res = sch.simulate(arrivals, cfg, depth, max_in_flight=in_flight, fetch_cycles=fetch)
    # Starvation bound: after aging, at most depth - 1 requests are ahead of it; each batch
    # takes one of them, and a batch is decided at most max_wait_cycles after the engine can
    # take one and runs at most fetch + max(rows) cycles; plus the batches already queued.
    max_cost = fetch + max(cfg.max_batch_rows, max(r.rows for _, r in arrivals))
    bound = cfg.aging_cycles + (depth + in_flight) * (max_cost + cfg.max_wait_cycles + 1)
    stats = sch.check_trace(res.submissions, res.responses, res.dispatches, cfg, depth, res.dones,
                            low_wait_bound=bound, accept_latency=0, timeout_latency=0)
    sc = stats["status_counts"]
    assert sc["ACCEPTED"] == sc["TIMED_OUT"] + sc["DONE"]
    assert sum(sc.values()) - sc["ACCEPTED"] == len(arrivals)
    assert sc["DONE"] > 1000 and sc["TIMED_OUT"] > 0 and sc["REJECTED_INVALID"] > 0
    if bursty:
        assert sc["REJECTED_FULL"] > 0
    for key in ("batches", "batched_rows", "accepted", "rejected", "timed_out", "max_wait", "total_wait"):
        assert stats[key] == res.stats[key], key
    assert stats["wait"][0]["p99"] == res.stats["wait"][0]["p99"]
    assert stats["mean_rows_per_batch"] > 1


def test_batching_gain_and_wait_bound_on_saturating_single_row_traffic():
    cfg = Config(max_batch_rows=16, max_wait_cycles=64, work_conserving=True, aging_cycles=1 << 20)
    arrivals = sch.poisson_arrivals(0.1, 3000, seed=3)
    on = sch.simulate(arrivals, cfg, 32).stats
    off = sch.simulate(arrivals, dataclasses.replace(cfg, max_batch_rows=1), 32).stats
    assert on["mean_rows_per_batch"] > 15
    assert on["throughput_rows_per_cycle"] / off["throughput_rows_per_cycle"] > 4


# -- check_trace catches corrupted traces ------------------------------------------------------

@pytest.fixture(scope="module")
def clean():
    cfg = Config(max_batch_rows=16, max_wait_cycles=64, work_conserving=True, aging_cycles=500)
    rng = np.random.default_rng(7)
    arrivals = [(1 + 3 * k, Request(id=k, program=int(rng.integers(0, 2)), rows=int(rng.integers(1, 5)),
                                    address=k * 16, priority=int(rng.integers(0, 2))))
                for k in range(600)]
    res = sch.simulate(arrivals, cfg, 32, fetch_cycles=64)
    sch.check_trace(res.submissions, res.responses, res.dispatches, cfg, 32, res.dones)
    return cfg, res


def corrupted(clean):
    cfg, res = clean
    return cfg, copy.deepcopy(res.submissions), list(res.responses), copy.deepcopy(res.dispatches), list(res.dones)


def check(cfg, subs, resps, disps, dones, **kw):
    return sch.check_trace(subs, resps, disps, cfg, 32, dones, **kw)


def test_catches_duplicated_done(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    k = next(k for k, r in enumerate(resps) if r[2] == Status.DONE)
    resps.insert(k + 1, resps[k])
    with pytest.raises(AssertionError, match="duplicated answer"):
        check(cfg, subs, resps, disps, dones)


def test_catches_lost_request(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    k = next(k for k, r in enumerate(resps) if r[2] == Status.DONE)
    del resps[k]
    with pytest.raises(AssertionError, match="no final answer"):
        check(cfg, subs, resps, disps, dones)
    # Never answered at all.
    cfg, subs, resps, disps, dones = corrupted(clean)
    rid = subs[-1][1].id
    resps = [r for r in resps if r[1] != rid]
    with pytest.raises(AssertionError, match="never answered"):
        check(cfg, subs, resps, disps, dones)


def test_catches_mixed_program_batch(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    # Move a request from a multi-request batch into a later batch of the other program.
    a = next(k for k, d in enumerate(disps) if len(d[3]) > 1)
    b = next(k for k in range(a + 1, len(disps)) if disps[k][2] != disps[a][2])
    moved = disps[a][3].pop()
    segs = disps[b][3]
    total = sum(s[1] for s in segs)
    segs.append((moved[0], moved[1], moved[2], total))
    with pytest.raises(AssertionError, match="mixes programs"):
        check(cfg, subs, resps, disps, dones)


def test_catches_wrong_row_offset(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    b = next(k for k, d in enumerate(disps) if len(d[3]) > 2)
    rid, rows, addr, off = disps[b][3][2]
    disps[b][3][2] = (rid, rows, addr, off + 1)
    with pytest.raises(AssertionError, match="row_offset"):
        check(cfg, subs, resps, disps, dones)


def test_catches_oversized_batch(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    # Move all of an earlier batch into a later batch of the same program.
    a = next(k for k, d in enumerate(disps) if len(d[3]) > 1)
    b = next(k for k in range(a + 1, len(disps)) if disps[k][2] == disps[a][2]
             and sum(s[1] for s in disps[k][3]) + sum(s[1] for s in disps[a][3]) > cfg.max_batch_rows)
    segs = disps[b][3]
    total = sum(s[1] for s in segs)
    for rid, rows, addr, _ in disps[a][3]:
        segs.append((rid, rows, addr, total))
        total += rows
    del disps[a]
    del dones[a]   # one batch fewer (one in flight at a time: dones are in dispatch order)
    with pytest.raises(AssertionError, match="oversized batch"):
        check(cfg, subs, resps, disps, dones)


def test_catches_double_dispatch_and_early_done(clean):
    cfg, subs, resps, disps, dones = corrupted(clean)
    disps.append((disps[-1][0] + 1000, 3, disps[0][2], [disps[0][3][0][:3] + (0,)]))
    dones.append((disps[-1][0] + 1, 3))
    with pytest.raises(AssertionError, match="dispatched twice"):
        check(cfg, subs, resps, disps, dones)
    cfg, subs, resps, disps, dones = corrupted(clean)
    k = next(k for k, r in enumerate(resps) if r[2] == Status.DONE)
    c, rid, code = resps[k]
    resps[k] = (c - 1, rid, code)        # one cycle before the engine's done
    with pytest.raises(AssertionError, match="before its batch's done"):
        check(cfg, subs, resps, disps, dones)


def test_catches_bad_rejections_and_late_dispatch():
    cfg = Config(max_batch_rows=16, max_wait_cycles=0, work_conserving=True, aging_cycles=100)
    r = Request(id=1, program=0, rows=2, deadline=10)
    # REJECTED_FULL with an empty queue.
    with pytest.raises(AssertionError, match="REJECTED_FULL"):
        sch.check_trace([(0, r)], [(0, 1, Status.REJECTED_FULL)], [], cfg, 4)
    # rows = 0 must be REJECTED_INVALID.
    with pytest.raises(AssertionError, match="rows = 0"):
        sch.check_trace([(0, Request(2, 0, 0))], [(0, 2, Status.REJECTED_FULL)], [], cfg, 1)
    # Dispatched past its deadline: caught exactly, allowed with enough scan slack.
    trace = ([(0, r)], [(0, 1, Status.ACCEPTED), (20, 1, Status.DONE)], [(12, 0, 0, [(1, 2, 0, 0)])])
    with pytest.raises(AssertionError, match="past its deadline"):
        sch.check_trace(*trace, cfg, 4)
    sch.check_trace(*trace, cfg, 4, scan_slack=2)
    # TIMED_OUT before the deadline passed.
    with pytest.raises(AssertionError, match="TIMED_OUT"):
        sch.check_trace([(0, r)], [(0, 1, Status.ACCEPTED), (10, 1, Status.TIMED_OUT)], [], cfg, 4)
    # Starvation bound.
    with pytest.raises(AssertionError, match="low-priority max wait"):
        sch.check_trace(*trace, cfg, 4, scan_slack=2, low_wait_bound=11)


def test_queue_full_rejection_is_legal_when_full():
    cfg = Config(max_batch_rows=16, max_wait_cycles=1000, work_conserving=False, aging_cycles=100)
    reqs = [Request(id=k, program=0, rows=1) for k in range(3)]
    subs = [(k, r) for k, r in enumerate(reqs)]
    resps = [(0, 0, Status.ACCEPTED), (1, 1, Status.ACCEPTED), (2, 2, Status.REJECTED_FULL),
             (60, 0, Status.DONE), (60, 1, Status.DONE)]
    disps = [(50, 0, 0, [(0, 1, 0, 0), (1, 1, 0, 1)])]
    stats = sch.check_trace(subs, resps, disps, cfg, 2)
    assert stats["rejected"] == 1 and stats["batches"] == 1 and stats["max_wait"] == 50
    with pytest.raises(AssertionError, match="REJECTED_FULL"):
        sch.check_trace(subs, resps, disps, cfg, 3)


def test_aging_bounds_low_priority_wait_under_a_high_priority_flood():
    """A saturating stream of high-priority requests of program 0 would starve low-priority
    requests of program 1 forever; aging bounds their wait."""
    cfg = Config(max_batch_rows=16, max_wait_cycles=32, work_conserving=True, aging_cycles=300)
    depth, fetch = 32, 64
    arrivals = []
    for k in range(6000):
        c = 1 + 5 * k                    # 0.2 rows/cycle: the batched capacity 16 / (64 + 16)
        low = k % 500 == 250
        arrivals.append((c, Request(id=k, program=1 if low else 0, rows=1, priority=0 if low else 1)))
    res = sch.simulate(arrivals, cfg, depth, fetch_cycles=fetch)
    bound = cfg.aging_cycles + (depth + 1) * (fetch + cfg.max_batch_rows + cfg.max_wait_cycles + 1)
    stats = sch.check_trace(res.submissions, res.responses, res.dispatches, cfg, depth, res.dones,
                            low_wait_bound=bound)
    assert stats["wait"][0]["count"] >= 5
    assert stats["wait"][0]["max"] >= cfg.aging_cycles        # it really had to age
    no_aging = dataclasses.replace(cfg, aging_cycles=(1 << 32) - 1)
    res = sch.simulate(arrivals, no_aging, depth, fetch_cycles=fetch)
    with pytest.raises(AssertionError, match="low-priority max wait"):
        sch.check_trace(res.submissions, res.responses, res.dispatches, no_aging, depth, res.dones,
                        low_wait_bound=bound)
