"""`make demo`: all-MiniLM-L6-v2 sentence embeddings on the simulated Jalapeño core.

A handful of sentences are submitted at once as requests to the hardware scheduler, which
batches them; every GEMM, softmax, LayerNorm and GELU of the 6-layer encoder runs on the
16 x 16 INT8 core's RTL (Verilator; the FP8 modes, which the INT8 program does not use,
are left out of this model, which then simulates twice as fast). Prints each sentence's
cosine to the float64 reference, the similarity matrix beside the float one, cycles per
sentence, MAC utilization, the batches the scheduler formed, and what the cycle count
means at the ULX3S build's fmax.
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "A cheetah is running behind its prey.",
    "The cat sleeps on the sofa.",
]


def _ulx3s_clock():
    """(MHz, where it comes from): the ULX3S build's fmax if a report exists, else its clock."""
    report = ROOT / "build" / "ulx3s" / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        if data.get("timing") == "pass":
            return float(data["pll_mhz"]), (f"the clock of the ULX3S bitstream, "
                                            f"{report.relative_to(ROOT)}")
        return float(data["sync_fmax_mhz"]), (f"the fmax of the ULX3S build, which missed its "
                                              f"clock; {report.relative_to(ROOT)}")
    from jalapeno.fpga_flow import BOARDS
    return float(BOARDS["ulx3s"].default_mhz), "the ULX3S build's default clock"


def _matrix(title, sim):
    n = len(sim)
    lines = [title, "      " + "".join(f"{j:>7d}" for j in range(n))]
    for i in range(n):
        lines.append(f"  {i:>3d} " + "".join(f"{sim[i, j]:7.3f}" for j in range(n)))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sentences", nargs="*", help="sentences (default: six built-in ones)")
    parser.add_argument("--core", default="int8", choices=("int8", "full", "small"),
                        help="the simulated core (default: int8, 16 x 16 without FP8 modes)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    sentences = args.sentences or SENTENCES
    start = time.monotonic()

    def say(text):
        print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)

    from jalapeno.minilm.quantize import load_or_build
    from jalapeno.minilm.service import embed_sentences, open_simulator
    from jalapeno.minilm.tokenizer import encode
    from jalapeno.minilm.weights import load_weights
    from sim.core_model import PRESETS, build_core_model
    from sim.golden.minilm_float import embed as float_embed

    # The core's Verilator model (a first build takes minutes, mostly the C++ compiler in
    # a subprocess) builds in the background while the model and the reference load.
    with ThreadPoolExecutor(1) as pool:
        say(f"checking the {args.core} core's Verilator model (built and cached on first use)")
        build = pool.submit(build_core_model, PRESETS[args.core], progress=say)
        say("loading all-MiniLM-L6-v2 and its INT8 program (built and cached on first use)")
        model = load_or_build("int8")
        weights = load_weights()
        reference = float_embed(weights, encode(sentences))
        build.result()
    say(f"starting the {args.core} core's Verilator model")
    transport, accelerator = open_simulator(args.core, progress=say)
    with transport:
        say(f"{len(sentences)} sentences submitted to the hardware scheduler")
        embeddings, stats = embed_sentences(accelerator, model, sentences, progress=say)
    s = stats.as_dict()
    cos = np.sum(embeddings * reference, axis=1)
    print()
    print("Cosine of each sentence's INT8 embedding (on the RTL) to the float64 reference:")
    for i, (sentence, c) in enumerate(zip(sentences, cos)):
        print(f"  {i:>3d}  {c:.5f}  {sentence}")
    print()
    left = _matrix("Similarity, accelerator (INT8)", embeddings @ embeddings.T)
    right = _matrix("Similarity, float64 reference", reference @ reference.T)
    width = max(len(line) for line in left) + 4
    for a, b in zip(left, right):
        print(a.ljust(width) + b)
    mhz, clock_note = _ulx3s_clock()
    per_sentence = s["cycles"] / len(sentences)
    print()
    print(f"Cycles: {s['cycles']:,} in total, {per_sentence:,.0f} per sentence "
          f"({s['tokens']} tokens)")
    print(f"MAC utilization: {s['mac_utilization']:.3f} of {s['macs_per_cycle_peak']} MACs/cycle "
          f"(array busy {s['array_busy']:.3f})")
    print(f"Batches formed by the scheduler: {s['batches']} (tokens per batch "
          f"{s['rows_per_batch']}, sentences per batch {s['sentences_per_batch']})")
    print(f"At {mhz:g} MHz ({clock_note}): {mhz * 1e6 / per_sentence:,.1f} sentences/s, "
          f"{mhz * 1e6 * s['tokens'] / s['cycles']:,.0f} tokens/s (that bitstream carries the "
          "GEMM datapath; docs/fpga.md)")
    print("Cycles by op: " + ", ".join(f"{k} {v:,}" for k, v in s["cycles_by_op"].items()))
    print(f"Wall time {time.monotonic() - start:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "sentences": sentences, "cosine_to_float": [float(c) for c in cos],
            "stats": s, "clock_mhz": mhz}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
