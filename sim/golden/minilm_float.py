"""float64 reference forward pass of all-MiniLM-L6-v2 (sentence-transformers semantics).

BERT encoder (post-LayerNorm): embeddings (word + position + token type 0, LayerNorm),
6 layers of ``h = LN(x + Attn(x)); x = LN(h + FFN(h))`` with 12 heads of 32, erf-GELU,
LayerNorm eps 1e-12; then mean pooling over the (non-padding) tokens and L2
normalization. Each sentence is run on its own, unpadded, so there is no attention mask
to apply; a padded batch with a mask gives the same result.

This is the float baseline every quantized path (``sim/golden/minilm_quantized.py``) is
measured against. Known value: cosine("A man is eating food.", "A man is eating a piece
of bread.") = :data:`KNOWN_COSINE` (checked by tests/test_minilm_golden.py).

``forward(weights, ids, collect=...)`` can also record intermediate tensors (the
calibration of ``jalapeno/minilm/quantize.py`` uses them).
"""

import math

import numpy as np



__all__ = ["KNOWN_PAIR", "KNOWN_COSINE", "layer_norm", "encode_tokens", "forward", "embed",
           "cosine_matrix"]


KNOWN_PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
#: cosine of KNOWN_PAIR's embeddings by this reference (float64).
KNOWN_COSINE = 0.7554


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x):
    """erf-GELU in float64: the same function as :func:`sim.golden.activation.gelu`, with a
    cheaper vectorization (``frompyfunc``) for the large calibration runs."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _record(collect, key, value):
    if collect is not None:
        collect.setdefault(key, []).append(value)


def encode_tokens(weights, ids, collect=None):
    """Token vectors (T x hidden, float64) of one sentence's ids after the last layer."""
    c = weights.config
    ids = np.asarray(ids, dtype=np.int64)
    t = ids.shape[0]
    e = (weights.word_embeddings[ids] + weights.position_embeddings[:t]
         + weights.token_type_embeddings[0]).astype(np.float64)
    _record(collect, "emb_sum", e)
    x = layer_norm(e, weights.emb_ln_gamma, weights.emb_ln_beta, c.layer_norm_eps)
    d = c.head_dim
    for i, lw in enumerate(weights.layers):
        _record(collect, f"l{i}.x", x)
        q = x @ lw.wq + lw.bq
        k = x @ lw.wk + lw.bk
        v = x @ lw.wv + lw.bv
        ctx = np.empty_like(x)
        for h in range(c.heads):
            cols = slice(h * d, (h + 1) * d)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(d)
            _record(collect, f"l{i}.scores", s)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            ctx[:, cols] = p @ v[:, cols]
        _record(collect, f"l{i}.q", q)
        _record(collect, f"l{i}.k", k)
        _record(collect, f"l{i}.v", v)
        _record(collect, f"l{i}.ctx", ctx)
        attn = ctx @ lw.wo + lw.bo
        r1 = x + attn
        _record(collect, f"l{i}.res1", r1)
        h1 = layer_norm(r1, lw.ln1_gamma, lw.ln1_beta, c.layer_norm_eps)
        _record(collect, f"l{i}.h", h1)
        u = h1 @ lw.w1 + lw.b1
        _record(collect, f"l{i}.ffn_in", u)
        g = gelu(u)
        _record(collect, f"l{i}.gelu", g)
        r2 = h1 + g @ lw.w2 + lw.b2
        _record(collect, f"l{i}.res2", r2)
        x = layer_norm(r2, lw.ln2_gamma, lw.ln2_beta, c.layer_norm_eps)
    _record(collect, "out", x)
    return x


def forward(weights, ids, collect=None):
    """The sentence embedding (hidden, float64, unit L2 norm) of one sentence's token ids."""
    x = encode_tokens(weights, ids, collect)
    pooled = x.mean(axis=0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def embed(weights, token_ids_list):
    """Sentence embeddings (sentences x hidden) for a list of token-id arrays."""
    return np.stack([forward(weights, ids) for ids in token_ids_list])


def cosine_matrix(a, b=None):
    """Pairwise cosines of the rows of ``a`` (and ``b``)."""
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T
