"""The all-MiniLM-L6-v2 WordPiece tokenizer (``tokenizer.json`` from the weights package).

``encode(sentences)`` gives one int64 array of token ids per sentence,
``[CLS] ... [SEP]``, truncated to 128 tokens (the shipped tokenizer.json's setting) and
**not padded**: the file pads every sentence to 128, which is turned off here; the
accelerator's softmax masks by valid length instead.
"""

from functools import lru_cache

import numpy as np

from .weights import ModelNotInstalledError, model_dir


__all__ = ["MAX_LENGTH", "CLS_ID", "SEP_ID", "PAD_ID", "load_tokenizer", "encode"]


MAX_LENGTH = 128
CLS_ID = 101
SEP_ID = 102
PAD_ID = 0


@lru_cache(maxsize=None)
def load_tokenizer(max_length=MAX_LENGTH):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise ModelNotInstalledError("the 'tokenizers' package is missing (pip install tokenizers)") from exc
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode(sentences, max_length=MAX_LENGTH):
    """Token ids (int64 arrays, ``[CLS] ... [SEP]``, at most ``max_length``) of each sentence."""
    if isinstance(sentences, str):
        sentences = [sentences]
    tokenizer = load_tokenizer(max_length)
    encodings = tokenizer.encode_batch(list(sentences))
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    for i in ids:
        assert i[0] == CLS_ID and i[-1] == SEP_ID, "the tokenizer must add [CLS] and [SEP]"
    return ids
