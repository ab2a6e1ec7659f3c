"""Accuracy of the quantized all-MiniLM-L6-v2 programs against the float64 reference.

    .venv/bin/python scripts/minilm_accuracy.py [--dtype int8 e4m3] [--baseline] [--out FILE]

Runs the bit-exact golden programs (sim/golden/minilm_quantized.py) of the INT8 and the
FP8 (E4M3) models (built by jalapeno/minilm/quantize.py from calibration.txt, cached in
build/minilm/) on the test sentences (jalapeno/minilm/eval_sentences.txt, disjoint from the
calibration set) and prints a flat JSON object:

    minilm.<dtype>.cos_min     worst cosine between a sentence's quantized and float embedding
    minilm.<dtype>.cos_mean    mean of those cosines
    minilm.<dtype>.spearman    Spearman correlation of all pairwise sentence similarities
                               (quantized vs float)

``--baseline`` adds ``minilm.int8_plain.*``: per-tensor activations, round-to-nearest
weights (docs/minilm.md). Takes a few minutes on one core (the golden FP8 matmul is exact,
not fast).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # BLAS threads thrash on small matrices

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jalapeno.minilm import eval_sentences  # noqa: E402
from jalapeno.minilm.quantize import PLAIN_INT8, load_or_build  # noqa: E402
from jalapeno.minilm.tokenizer import encode  # noqa: E402
from jalapeno.minilm.weights import load_weights  # noqa: E402
from sim.golden import minilm_float, minilm_quantized  # noqa: E402


def rankdata(values):
    """Ranks 1..n, ties averaged (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def metrics(embeddings, reference):
    cos = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1))
    iu = np.triu_indices(len(reference), k=1)
    sim_q = minilm_float.cosine_matrix(embeddings)[iu]
    sim_f = minilm_float.cosine_matrix(reference)[iu]
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "spearman": spearman(sim_q, sim_f)}, cos


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", default=["int8", "e4m3"], choices=["int8", "e4m3"])
    parser.add_argument("--baseline", action="store_true", help="also the plain per-tensor INT8 model")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--verbose", action="store_true", help="the worst sentences on stderr")
    args = parser.parse_args(argv)

    sentences = eval_sentences()[:args.limit]
    ids = encode(sentences)
    weights = load_weights()
    reference = minilm_float.embed(weights, ids)
    results = {"minilm.eval_sentences": len(sentences)}
    runs = [(d, d, {}) for d in args.dtype]
    if args.baseline:
        runs.append(("int8_plain", "int8", PLAIN_INT8))
    for name, dtype, overrides in runs:
        start = time.time()
        model = load_or_build(dtype, weights=weights, **overrides)
        embeddings = minilm_quantized.embed(model, ids)
        values, cos = metrics(embeddings, reference)
        for key, value in values.items():
            results[f"minilm.{name}.{key}"] = round(value, 6)
        if args.verbose:
            worst = np.argsort(cos)[:5]
            print(f"{name}: {time.time() - start:.0f} s; worst: "
                  + "; ".join(f"{cos[i]:.4f} {sentences[i]!r}" for i in worst), file=sys.stderr)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
