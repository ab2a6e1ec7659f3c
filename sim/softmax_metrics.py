"""Softmax unit: shared stimulus and expected outputs for its tests, and its metrics.

Plain Python (no cocotb import): used by ``tests/test_softmax.py``, by the cocotb
modules ``tests/benches/tb_softmax.py`` and ``sim/softmax_bench.py``, and by
``scripts/bench.py`` through :func:`bench_softmax`.

A batch of rows is a dict of per-row arrays ``count``, ``length``, ``causal``,
``row``, ``offset`` (the descriptor fields of :func:`rtl.softmax.row_command_layout`)
and ``scores``, a list of INT8 arrays of ``count`` elements each.
"""

import json
import tempfile
from pathlib import Path

import numpy as np

from rtl.softmax import row_command_layout, table_entry_layout
from sim.golden import softmax as golden
from sim.payload import pack, pack_lanes


__all__ = ["FIELDS", "make_rows", "concat_rows", "random_rows", "edge_rows", "error_rows",
           "encode", "expected_outputs", "golden_error", "bench_softmax"]


FIELDS = ("count", "length", "causal", "row", "offset")


def make_rows(scores, length=None, causal=0, row=0, offset=0):
    """A batch from a list of score arrays and per-row (or shared) descriptor fields."""
    scores = [np.asarray(s, dtype=np.int64) for s in scores]
    n = len(scores)
    counts = np.array([len(s) for s in scores], dtype=np.int64)
    lengths = counts if length is None else np.broadcast_to(np.asarray(length, dtype=np.int64), (n,))
    batch = {"count": counts, "length": np.array(lengths, dtype=np.int64)}
    for name, value in (("causal", causal), ("row", row), ("offset", offset)):
        batch[name] = np.array(np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)))
    batch["scores"] = scores
    return batch


def concat_rows(*batches):
    out = {name: np.concatenate([b[name] for b in batches]) for name in FIELDS}
    out["scores"] = [s for b in batches for s in b["scores"]]
    return out


def random_rows(rng, n, max_length, *, long=False):
    """Random rows: random counts (or max_length if ``long``), lengths, causal masks and
    score distributions (uniform, narrow, clustered near the top)."""
    scores, lengths, causal, rows, offsets = [], [], [], [], []
    for _ in range(n):
        count = max_length if long else int(rng.choice([1, 2, max_length, rng.integers(1, max_length + 1)]))
        kind = rng.integers(0, 3)
        if kind == 0:
            x = rng.integers(-128, 128, count)
        elif kind == 1:
            centre = int(rng.integers(-100, 100))
            x = np.clip(centre + rng.integers(-12, 13, count), -128, 127)
        else:
            x = 127 - rng.geometric(0.05, count).clip(max=255)
        scores.append(x)
        lengths.append(count if rng.random() < 0.6 else int(rng.integers(0, count + 1)))
        causal.append(int(rng.random() < 0.3))
        rows.append(int(rng.integers(0, max_length)))
        offsets.append(int(rng.integers(-4, 5)))
    return make_rows(scores, lengths, causal, rows, offsets)


def edge_rows(max_length, rng):
    """Constant rows, a dominant element, very negative rows, length 1, maximal length,
    every mask case (padding, causal, causal past the length, fully masked both ways)."""
    n = max_length
    short = min(n, 37)
    parts = [
        make_rows([np.full(n, v) for v in (-128, 0, 127)] + [np.full(short, 5), np.full(1, -7)]),
        make_rows([np.where(np.arange(n) == n // 3, 127, -128), np.where(np.arange(n) == 0, 10, 0),
                   np.where(np.arange(short) == short - 1, 127, 126)]),
        make_rows([np.full(n, -128) + (np.arange(n) == n - 1), np.full(short, -128),
                   -128 + (np.arange(n) % 3)]),
        make_rows([[127], [-128], [0]]),                                     # length 1
        make_rows([[5]], length=0),                                          # length 1, masked
        make_rows([rng.integers(-128, 128, n)]),                             # maximal length
        make_rows([rng.integers(-128, 128, n)] * 3, length=[n, n // 2, 1]),  # padding
        make_rows([rng.integers(-128, 128, n)] * 5, causal=1,
                  row=[0, n // 2, n - 1, 3, 0], offset=[0, 0, 0, -2, 5]),   # causal
        make_rows([rng.integers(-128, 128, short)] * 2, length=[short, 4], causal=1,
                  row=[3 * n, 10], offset=[0, 0]),                           # causal past length
        make_rows([rng.integers(-128, 128, short)] * 4, length=[0, short, short, short],
                  causal=[0, 1, 1, 1], row=[0, 0, 2, 0], offset=[0, -1, -3, -32768]),  # fully masked
    ]
    return concat_rows(*parts)


def error_rows(max_length, rng):
    """Descriptor errors: count 0, length > count, and count > max_length where the field allows."""
    count_max = (1 << row_command_layout(max_length)["count"].shape.width) - 1
    counts = [0, 3, 1]
    lengths = [0, 4, 2]
    if count_max > max_length:
        counts.append(min(count_max, max_length + 3))
        lengths.append(2)
    scores = [rng.integers(-128, 128, c) for c in counts]
    batch = make_rows(scores, lengths)
    return batch


def encode(batch, lanes, max_length, table, rng=None):
    """Stream payloads ``(table, cmd, i)`` for a batch; padding lanes of the last transfer
    of a row get random scores (the unit must ignore them)."""
    rng = rng or np.random.default_rng(0)
    table_payloads = pack(table_entry_layout(), {"index": np.arange(256), "value": np.asarray(table)})
    cmd_payloads = pack(row_command_layout(max_length), {name: batch[name] for name in FIELDS})
    transfers = []
    for x in batch["scores"]:
        pad = -len(x) % lanes
        padded = np.concatenate([x, rng.integers(-128, 128, pad)]).reshape(-1, lanes)
        transfers.append(padded)
    i_payloads = pack_lanes(np.concatenate(transfers), 8) if transfers and sum(map(len, transfers)) else []
    return table_payloads, cmd_payloads, i_payloads


def expected_outputs(batch, lanes, max_length, table):
    """``(probs, last, error)`` per output transfer, from the golden model."""
    probs, last, error = [], [], []
    bad = golden.row_errors(batch["count"], batch["length"], max_length)
    for k, x in enumerate(batch["scores"]):
        count = int(batch["count"][k])
        n_out = max(count, 1)
        if bad[k]:
            p = np.zeros(n_out, dtype=np.int64)
        else:
            p = golden.softmax(np.asarray(x)[None, :], [batch["length"][k]], [batch["causal"][k]],
                               [batch["row"][k]], [batch["offset"][k]], table)[0].astype(np.int64)
        p = np.concatenate([p, np.zeros(-n_out % lanes, dtype=np.int64)]).reshape(-1, lanes)
        probs.append(p)
        flags = np.zeros(len(p), dtype=np.int64)
        flags[-1] = 1
        last.append(flags)
        error.append(np.full(len(p), int(bad[k]), dtype=np.int64))
    return np.concatenate(probs), np.concatenate(last), np.concatenate(error)


def decode(payloads, lanes):
    """``(probs, last, error)`` arrays from output payload integers."""
    payloads = [int(p) for p in payloads]
    probs = np.array([[(p >> (8 * lane)) & 0xFF for lane in range(lanes)] for p in payloads],
                     dtype=np.int64).reshape(len(payloads), lanes)
    last = np.array([(p >> (8 * lanes)) & 1 for p in payloads], dtype=np.int64)
    error = np.array([(p >> (8 * lanes + 1)) & 1 for p in payloads], dtype=np.int64)
    return probs, last, error


def compare(got, expected, batch, lanes):
    """Raise AssertionError naming the first mismatching rows."""
    names = ("probs", "last", "error")
    if len(got[0]) != len(expected[0]):
        raise AssertionError(f"{len(got[0])} output transfers, expected {len(expected[0])}")
    bad_transfers = np.flatnonzero((got[0] != expected[0]).any(axis=1) | (got[1] != expected[1])
                                   | (got[2] != expected[2]))
    if len(bad_transfers):
        starts = np.cumsum([0] + [-(-max(int(c), 1) // lanes) for c in batch["count"]])
        lines = []
        for t in bad_transfers[:6]:
            row = int(np.searchsorted(starts, t, side="right") - 1)
            fields = {n: int(batch[n][row]) for n in FIELDS}
            lines.append(f"  transfer {t} (row {row} {fields}, transfer {t - starts[row]} of row): "
                         + ", ".join(f"{n} got {got[i][t].tolist()} expected {expected[i][t].tolist()}"
                                     for i, n in enumerate(names)))
        raise AssertionError(f"{len(bad_transfers)} of {len(got[0])} output transfers mismatch\n"
                             + "\n".join(lines))


def golden_error(rows=100_000, seed=0, n=512, chunk=5000):
    """Max |golden / 256 - float64 softmax| over ``rows`` random rows: random scales
    (log-uniform 0.005..0.5), random lengths, 30% causal. Returns ``(max_err, rows)``."""
    rng = np.random.default_rng(seed)
    worst, done = 0.0, 0
    while done < rows:
        r = min(chunk, rows - done)
        scale = float(np.exp(rng.uniform(np.log(0.005), np.log(0.5))))
        x = rng.integers(-128, 128, (r, n))
        lengths = rng.integers(0, n + 1, r)
        causal = rng.random(r) < 0.3
        row_index = rng.integers(0, n, r)
        offsets = rng.integers(-8, 9, r)
        p = golden.softmax(x, lengths, causal, row_index, offsets, golden.exp_table(scale))
        ref = golden.reference_softmax(x, scale, lengths, causal, row_index, offsets)
        worst = max(worst, float(np.abs(p / 256.0 - ref).max()))
        done += r
    return worst, done


def bench_softmax(results, rows=100_000, bench_rows=8):
    """``softmax.max_abs_err`` (golden vs float64, in probability units) and
    ``softmax.elements_per_cycle`` (512-element rows back to back on Verilator)."""
    from rtl.softmax import Softmax
    from sim.cocotb_runner import run_cocotb

    worst, _ = golden_error(rows=rows, seed=0)
    results["softmax.max_abs_err"] = round(worst, 6)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "softmax.json"
        run_cocotb(Softmax(max_length=512, lanes=1), name="softmax_512x1", test_module="sim.softmax_bench",
                   extra_env={"MAX_LENGTH": 512, "LANES": 1, "ROWS": bench_rows, "RESULT": out,
                              "COCOTB_LOG_LEVEL": "WARNING"})
        measured = json.loads(out.read_text())
    results["softmax.elements_per_cycle"] = round(measured["elements_per_cycle"], 4)
    results["softmax.latency_cycles"] = measured["latency_cycles"]
