"""Sentence embeddings served by the accelerator: requests, hardware batching, results by id.

:func:`embed_sentences` is what ``jalapeno embed`` and ``make demo`` call: each sentence
becomes one request (its tokens are its rows), all are submitted at once to the
hardware scheduler in front of the core (:class:`jalapeno.serving.Server`), the
scheduler forms the batches, and each batch runs the quantized MiniLM program
(:class:`.executor.ProgramExecutor`) over the concatenated tokens of its sentences.
"""

from dataclasses import dataclass, field

import numpy as np


__all__ = ["EmbeddingStats", "embed_sentences", "open_simulator", "DEFAULT_MAX_BATCH_ROWS"]

#: Most tokens the scheduler puts into one batch.
DEFAULT_MAX_BATCH_ROWS = 256


@dataclass
class EmbeddingStats:
    """Device statistics of one :func:`embed_sentences` call."""
    lanes: int
    sentences: int = 0
    tokens: int = 0
    cycles: int = 0             # sum over the batches' programs (hardware cycle counter)
    mac_cycles: int = 0
    useful_macs: int = 0
    programs: int = 0
    batch_rows: list = field(default_factory=list)
    batch_sentences: list = field(default_factory=list)
    cycles_by_op: dict = field(default_factory=dict)

    @property
    def batches(self):
        return len(self.batch_rows)

    @property
    def mac_utilization(self):
        return self.useful_macs / max(1, self.cycles * self.lanes * self.lanes)

    def as_dict(self):
        return {
            "sentences": self.sentences,
            "tokens": self.tokens,
            "cycles": self.cycles,
            "cycles_per_sentence": round(self.cycles / max(1, self.sentences), 1),
            "mac_utilization": round(self.mac_utilization, 4),
            "array_busy": round(self.mac_cycles / max(1, self.cycles), 4),
            "useful_macs": self.useful_macs,
            "macs_per_cycle_peak": self.lanes * self.lanes,
            "programs": self.programs,
            "batches": self.batches,
            "rows_per_batch": list(self.batch_rows),
            "sentences_per_batch": list(self.batch_sentences),
            "cycles_by_op": dict(sorted(self.cycles_by_op.items())),
        }


def open_simulator(core="full", progress=None):
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
    from .executor import ProgramExecutor
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
    stats = EmbeddingStats(lanes=accelerator.lanes, sentences=len(sentences),
                           tokens=int(sum(len(i) for i in ids)))
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
        stats.cycles += batch_stats.cycles
        stats.mac_cycles += batch_stats.mac_cycles
        stats.useful_macs += batch_stats.useful_macs
        stats.programs += batch_stats.programs
        stats.batch_rows.append(batch.total_rows)
        stats.batch_sentences.append(len(order))
        for op, cycles in batch_stats.by_op.items():
            stats.cycles_by_op[op] = stats.cycles_by_op.get(op, 0) + cycles
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
