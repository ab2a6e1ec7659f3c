"""Sentence embeddings served by the accelerator: requests, hardware batching, results by id.

:func:`embed_sentences` is what ``jalapeno embed`` and ``make demo`` call: each sentence
becomes one request (its tokens are its rows), all are submitted at once to the
hardware scheduler in front of the core (:class:`jalapeno.serving.Server`), the
scheduler forms the batches, and each batch runs the quantized MiniLM program
(:class:`.executor.ProgramExecutor`) over the concatenated tokens of its sentences.
"""

from dataclasses import dataclass, field

import numpy as np

from .executor import BatchStats, ProgramExecutor


__all__ = ["EmbeddingStats", "embed_sentences", "open_simulator", "DEFAULT_MAX_BATCH_ROWS"]

#: Most tokens the scheduler puts into one batch.
DEFAULT_MAX_BATCH_ROWS = 256


@dataclass
class EmbeddingStats:
    """Device statistics of one :func:`embed_sentences` call: the sum of its batches'
    :class:`~.executor.BatchStats` (hardware counters) and the size of each batch."""
    total: BatchStats
    batch_rows: list = field(default_factory=list)
    batch_sentences: list = field(default_factory=list)

    @property
    def batches(self):
        return len(self.batch_rows)

    @property
    def mac_utilization(self):
        return self.total.mac_utilization

    def add_batch(self, batch_stats):
        self.total.add(batch_stats)
        self.batch_rows.append(batch_stats.rows)
        self.batch_sentences.append(batch_stats.sequences)

    def as_dict(self):
        t = self.total
        return {
            "sentences": t.sequences,
            "tokens": t.rows,
            "cycles": t.cycles,
            "cycles_per_sentence": round(t.cycles / max(1, t.sequences), 1),
            "mac_utilization": round(t.mac_utilization, 4),
            "array_busy": round(t.array_busy, 4),
            "useful_macs": t.useful_macs,
            "macs_per_cycle_peak": t.lanes * t.lanes,
            "programs": t.programs,
            "batches": self.batches,
            "rows_per_batch": list(self.batch_rows),
            "sentences_per_batch": list(self.batch_sentences),
            "cycles_by_op": dict(sorted(t.by_op.items())),
        }


def open_simulator(core="int8", progress=None):
    """A :class:`~jalapeno.sim_transport.SimTransport` on the core's Verilator model
    (built on first use, then cached) and its :class:`~jalapeno.accelerator.Accelerator`."""
    from sim.core_model import PRESETS

    from ..accelerator import Accelerator
    from ..sim_transport import SimTransport
    if core not in PRESETS:
        raise ValueError(f"unknown core {core!r}; choose one of {sorted(PRESETS)}")
    transport = SimTransport(PRESETS[core], progress=progress)
    return transport, Accelerator(transport)


def embed_sentences(accelerator, model, sentences, *, max_batch_rows=DEFAULT_MAX_BATCH_ROWS,
                    max_wait_cycles=2000, progress=None):
    """Embeddings (len(sentences) x hidden, float64, unit norm) and :class:`EmbeddingStats`.

    ``model`` is the quantized program (``jalapeno.minilm.quantize.load_or_build``);
    ``progress(text)`` receives a line per batch and op group.
    """
    from ..serving import Request, Server
    from .tokenizer import encode

    if isinstance(sentences, str):
        sentences = [sentences]
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences to embed")
    if any(not s.strip() for s in sentences):
        raise ValueError("a sentence is empty")
    executor = ProgramExecutor(accelerator, model)
    ids = encode(sentences)
    longest = max(len(i) for i in ids)
    max_batch_rows = min(max_batch_rows, accelerator.max_rows)
    if longest > max_batch_rows:
        raise ValueError(f"a sentence has {longest} tokens; a batch holds at most {max_batch_rows}")
    stats = EmbeddingStats(BatchStats(lanes=accelerator.lanes))
    done = [0]

    def run_batch(acc, batch, inputs):
        order = sorted(batch.segments, key=lambda s: s.row_offset)
        if progress is not None:
            progress(f"batch {stats.batches + 1}: {len(order)} sentences, "
                     f"{batch.total_rows} tokens ({done[0]}/{len(sentences)} done)")

        def step(i, total, op):
            if progress is not None and (i % 8 == 0 or i == total - 1):
                progress(f"  op {i + 1}/{total}: {op!r}"[:100])
        embeddings, batch_stats = executor.run([inputs[s.id] for s in order], progress=step)
        stats.add_batch(batch_stats)
        done[0] += len(order)
        return {s.id: embeddings[k] for k, s in enumerate(order)}

    server = Server(accelerator, {0: run_batch}, max_batch_rows=max_batch_rows,
                    max_wait_cycles=max_wait_cycles)
    # All at once, in waves of at most the scheduler's queue depth (a full queue rejects).
    wave = accelerator.transport.config.sched_queue_depth
    results, status = {}, {}
    for first in range(0, len(sentences), wave):
        requests = [Request(i, 0, ids[i], arrival=0)
                    for i in range(first, min(first + wave, len(sentences)))]
        served, answered, _ = server.serve(requests)
        results.update(served)
        status.update(answered)
    missing = [i for i in range(len(sentences)) if i not in results]
    if missing:
        reasons = ", ".join(f"{i}: {status.get(i)}" for i in missing)
        raise RuntimeError(f"the scheduler did not serve every sentence ({reasons})")
    return np.stack([results[i] for i in range(len(sentences))]), stats
