"""One attention head as the core computes it, composed from the unit golden models."""

import numpy as np

from .matmul import matmul
from .requantizer import requantize
from .softmax import softmax


__all__ = ["attention_head"]


def _requantize(acc, params):
    p = {"zero_point": 0, **params}
    n = acc.shape[1]
    column = lambda name: np.broadcast_to(np.asarray(p[name], dtype=np.int64), (n,))[None, :]
    return requantize(acc, column("bias"), column("multiplier"), column("shift"),
                      column("zero_point"))["value"].astype(np.int8)


def attention_head(q, k, v, *, score_params, softmax_table, out_params, length=None,
                   causal=False):
    """``O = requantize(softmax(requantize(Q K^T)) V)``, bit-exact with
    :meth:`jalapeno.accelerator.Accelerator.attention_head` (int8 in, int8 out)."""
    q, k, v = (np.asarray(a, dtype=np.int64) for a in (q, k, v))
    t = q.shape[0]
    length = t if length is None else length
    codes = lambda a: (a & 0xFF).astype(np.uint8)
    scores = _requantize(matmul(codes(q), codes(k).T, 0), score_params)
    probs = softmax(scores, length, causal, np.arange(t), 0, softmax_table)
    return _requantize(matmul(probs, codes(v), 1), out_params)
