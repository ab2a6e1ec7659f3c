"""Bit-exact golden model of all-MiniLM-L6-v2 on the accelerator: a program of hardware ops.

A :class:`QuantizedMiniLM` (built by ``jalapeno/minilm/quantize.py``) holds a **program**, a
flat tuple of ops, and the integer **params** they read (weight codes, per-channel
multipliers and shifts, biases, LayerNorm gamma/beta codes, activation and softmax tables,
exponent shifts). Each op is one hardware instruction, so that a compiler can map the
program 1:1; :func:`run_tokens` interprets it by calling the units' golden models and
nothing else:

============== ========================================= ===================================
op             golden function                           unit
============== ========================================= ===================================
MatMul         sim.golden.matmul.matmul                  matmul engine; ``passes`` are
                                                         accumulated in place (one call on
                                                         the K-concatenation of the passes)
AttnScores     sim.golden.matmul.matmul per head         matmul engine, ``Q_h @ K_h^T``
AttnContext    sim.golden.matmul.matmul per head         matmul engine, ``P_h @ V_h``
Requantize     sim.golden.requantizer.requantize         requantizer (INT32 -> INT8)
Requantize16   sim.golden.int16_ops.requantize_int16     requantizer, 16-bit output (new);
               (requantize_residual_int16 with a         with a residual input: acc +
               residual)                                 residual * d first (new)
Softmax        sim.golden.softmax.softmax                softmax unit (length mask)
LayerNorm16    sim.golden.int16_ops.layernorm_int16      LayerNorm, 16-bit input (new)
Activation     sim.golden.activation.apply               activation table (INT8 -> 8 bits)
ToE4M3         sim.golden.fp_convert.fp32_to_e4m3        FP32 -> E4M3 converter (new)
ToInt          sim.golden.fp_convert.fp32_to_int         FP32 -> INT8/INT16 converter (new)
HostEmbed      (host) embedding lookup -> INT16 codes
HostPool       (host) dequantize, mean over the valid rows, L2 normalization
============== ========================================= ===================================

Tensors live in a dict by name: token-major ``T x C`` arrays of codes (int64 values for
integer tensors, uint8 codes for FP8 tensors, uint32 FP32 bit patterns for FP8 matmul
results), and ``H x T x T`` arrays for attention scores and probabilities. ``T`` is the
sequence length padded to ``pad_to`` (if given); the softmax masks the padding keys by
valid length, the host's pooling ignores padding rows, and every other op works row by
row, so padding never changes the valid rows (a test checks it).

**Row classes.** Some per-element parameters come in two sets, chosen per row: class 1
for the first row of each sequence ([CLS], whose activations are 10-100x larger than any
other token's in BERT) and class 0 for the others. The hardware gets this from the
descriptor (a row's class is known from its position); an op whose params have a leading
axis of 2 uses it (``Requantize``, ``LayerNorm16``, ``Activation``).
"""

from dataclasses import dataclass, field

import numpy as np

from rtl.matmul.mode import MatmulMode

from . import activation as activation_golden
from . import matmul as matmul_golden
from . import requantizer as requantizer_golden
from . import softmax as softmax_golden
from .fp_convert import fp32_to_e4m3, fp32_to_int
from .int16_ops import layernorm_int16, requantize_int16, requantize_residual_int16


__all__ = ["ONES", "MatMul", "AttnScores", "AttnContext", "Requantize", "Requantize16", "Softmax",
           "LayerNorm16", "Activation", "ToE4M3", "ToInt", "HostEmbed", "HostPool",
           "QuantizedMiniLM", "run_tokens", "embed", "embed_int8", "embed_e4m3", "program_table"]


#: Name of the constant activation operand of bias passes (FP8 path): one column per bias
#: row, every element the E4M3 code ``params[w + '.ones']`` (a power of two) of that pass.
ONES = "ONES"


# --------------------------------------------------------------------------- ops

@dataclass(frozen=True)
class MatMul:
    """``out = sum_p A_p @ W_p`` in one engine instruction; passes accumulate in place.

    ``passes`` are ``(activation tensor, weight param)`` pairs; ``a_cols`` optionally
    selects columns of an activation tensor (``(tensor, param, (start, stop))``).
    """
    out: str
    passes: tuple
    mode: MatmulMode
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class AttnScores:
    """Per head h: ``out[h] = A[:, q_h] @ A[:, k_h]^T`` (one engine pass per head and sequence)."""
    out: str
    inp: str
    q_start: int
    k_start: int
    heads: int
    head_dim: int
    mode: MatmulMode
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class AttnContext:
    """Per head h: ``out[:, h] = P[h] @ V[:, v_h]`` (P: probabilities, or their E4M3 codes;
    a tuple of P tensors accumulates ``sum_i P_i[h] @ V_h`` in place, e.g. hi + lo parts)."""
    out: str
    p: str
    v: str
    v_start: int
    heads: int
    head_dim: int
    mode: MatmulMode
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class Requantize:
    """INT32 -> INT8 by ``params + '.bias' / '.multiplier' / '.shift' / '.zero_point'``.

    Param arrays are per output channel (last axis), with a leading row-class axis of 2
    when they differ for [CLS] rows; ``per_head`` params have one value per head (for
    ``H x T x T`` inputs).
    """
    out: str
    inp: str
    params: str
    per_head: bool = False
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class Requantize16(Requantize):
    """INT32 -> INT16 (the requantizer with a 16-bit clamp), for the LayerNorm input. With
    ``residual``: ``acc + residual * d`` first (``params + '.d'``, per channel), the
    residual add, exactly (:func:`sim.golden.int16_ops.requantize_residual_int16`)."""
    residual: str = ""


@dataclass(frozen=True)
class Softmax:
    """INT8 scores -> UINT8 probabilities, one exp table per head (``params + '.table'``)."""
    out: str
    inp: str
    params: str
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class LayerNorm16:
    """INT16 rows -> INT8 by ``params + '.gamma' / '.beta' / '.gamma_frac' / '.eps'`` (per class)."""
    out: str
    inp: str
    params: str
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class Activation:
    """Table lookup on column groups: ``params + '.tables'`` is G x 256 (or 2 x G x 256 by row
    class), ``groups`` the ``(start, stop)`` column range of each table. ``unsigned_input``:
    the input codes are UINT8 (softmax probabilities), looked up by their byte."""
    out: str
    inp: str
    params: str
    groups: tuple
    unsigned_input: bool = False
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class ToE4M3:
    """FP32 bits -> E4M3 codes of ``x * 2**shift`` (``params + '.shift'``, per channel or scalar)."""
    out: str
    inp: str
    params: str
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class ToInt:
    """FP32 bits -> INT8 / INT16 of ``round_half_even(x * 2**shift)`` (per channel, or per head)."""
    out: str
    inp: str
    params: str
    bits: int = 8
    per_head: bool = False
    layer: int = -1
    note: str = ""


@dataclass(frozen=True)
class HostEmbed:
    """Host: ``round_half_even((word[id] + position[t] + token_type[0]) / scale)`` -> INT16."""
    out: str
    note: str = ""


@dataclass(frozen=True)
class HostPool:
    """Host: ``codes * params + '.scale'`` (per channel), mean over the valid rows, L2 norm."""
    inp: str
    params: str
    note: str = ""


@dataclass
class QuantizedMiniLM:
    """What the host loads: the program and its parameters (see the module docstring)."""
    dtype: str                      # "int8" or "e4m3"
    program: tuple
    params: dict                    # name -> numpy array (integers, or float for host ops)
    hidden: int = 384
    heads: int = 12
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- interpreter

def _row_select(param, classes):
    """A per-element parameter for each row: ``param`` (C,) or (2, C) by row class."""
    param = np.asarray(param)
    if param.ndim >= 1 and param.shape[0] == 2 and param.ndim == 2:
        return param[classes]
    return param


def _int_codes(values):
    return (np.asarray(values, dtype=np.int64) & 0xFF).astype(np.uint8)


def _exec_matmul(op, tensors, params, model, rows):
    a_parts, w_parts = [], []
    for entry in op.passes:
        a_name, w_name = entry[0], entry[1]
        w = params[w_name]
        if a_name == ONES:
            a = np.full((rows, w.shape[0]), params[f"{w_name}.ones"][()], dtype=np.uint8)
        else:
            a = tensors[a_name]
            if len(entry) > 2:
                a = a[:, entry[2][0]:entry[2][1]]
            a = _int_codes(a) if a.dtype != np.uint8 else a
        a_parts.append(a)
        w_parts.append(w)
    return matmul_golden.matmul(np.concatenate(a_parts, axis=1), np.concatenate(w_parts, axis=0),
                                op.mode)


def _exec_requantize(op, tensors, params, classes):
    acc = tensors[op.inp]
    names = ("bias", "multiplier", "shift", "zero_point")
    p = [np.asarray(params[f"{op.params}.{n}"]) for n in names]
    if op.per_head:
        p = [x.reshape(-1, 1, 1) for x in p]
    else:
        p = [_row_select(x, classes) for x in p]
    if isinstance(op, Requantize16) and op.residual:
        d = np.asarray(params[f"{op.params}.d"])
        result = requantize_residual_int16(acc, tensors[op.residual], d, *p)
    elif isinstance(op, Requantize16):
        result = requantize_int16(acc, *p)
    else:
        result = requantizer_golden.requantize(acc, *p)
    if result["error"].any():
        raise ValueError(f"{op.out}: requantizer shift out of range")
    return result["value"]


def _exec_layernorm(op, tensors, params, classes):
    x = tensors[op.inp]
    gamma = np.asarray(params[f"{op.params}.gamma"])
    beta = np.asarray(params[f"{op.params}.beta"])
    gamma_frac = np.atleast_1d(params[f"{op.params}.gamma_frac"])
    eps = np.atleast_1d(params[f"{op.params}.eps"])
    if gamma.ndim == 1:
        return layernorm_int16(x, gamma, beta, int(gamma_frac[0]), int(eps[0]))
    out = np.empty(x.shape, dtype=np.int64)
    for c in (0, 1):  # the unit's descriptor carries the row's parameter set
        rows = classes == c
        if rows.any():
            out[rows] = layernorm_int16(x[rows], gamma[c], beta[c], int(gamma_frac[c]), int(eps[c]))
    return out


def _exec_activation(op, tensors, params, classes):
    x = np.asarray(tensors[op.inp], dtype=np.int64)
    if op.unsigned_input:
        x = np.where(x >= 128, x - 256, x)  # the same byte, read as int8
    tables = np.asarray(params[f"{op.params}.tables"])
    out = np.zeros(x.shape, dtype=np.int64)     # columns outside every group: 0
    for g, (start, stop) in enumerate(op.groups):
        if tables.ndim == 3:
            for c in (0, 1):
                rows = classes == c
                if rows.any():
                    out[rows, start:stop] = activation_golden.apply(tables[c, g], x[rows, start:stop])
        else:
            out[..., start:stop] = activation_golden.apply(tables[g], x[..., start:stop])
    return out


def run_tokens(model, ids, pad_to=None, trace=None):
    """Run the program on one sequence of token ids; returns the host's pooled, L2-normalized
    embedding (float64, hidden). ``trace``: a dict that receives every tensor."""
    ids = np.asarray(ids, dtype=np.int64)
    length = ids.shape[0]
    rows = length if pad_to is None else max(int(pad_to), length)
    classes = np.zeros(rows, dtype=np.int64)
    classes[0] = 1
    params = model.params
    tensors = {}
    result = None
    for op in model.program:
        if isinstance(op, HostEmbed):
            padded = np.concatenate([ids, np.zeros(rows - length, dtype=np.int64)])
            e = (params["host.word"][padded].astype(np.float64)
                 + params["host.position"][:rows].astype(np.float64)
                 + params["host.token_type"][0].astype(np.float64))
            codes = np.rint(e / float(params["host.embed_scale"]))
            tensors[op.out] = np.clip(codes, -32768, 32767).astype(np.int64)
        elif isinstance(op, MatMul):
            tensors[op.out] = _exec_matmul(op, tensors, params, model, rows)
        elif isinstance(op, AttnScores):
            a = tensors[op.inp]
            out = []
            for h in range(op.heads):
                q = a[:, op.q_start + h * op.head_dim: op.q_start + (h + 1) * op.head_dim]
                k = a[:, op.k_start + h * op.head_dim: op.k_start + (h + 1) * op.head_dim]
                q, k = (x if x.dtype == np.uint8 else _int_codes(x) for x in (q, k))
                out.append(matmul_golden.matmul(q, k.T, op.mode))
            tensors[op.out] = np.stack(out)
        elif isinstance(op, AttnContext):
            ps = [tensors[name] for name in (op.p if isinstance(op.p, tuple) else (op.p,))]
            v = tensors[op.v]
            parts = []
            for h in range(op.heads):
                vh = v[:, op.v_start + h * op.head_dim: op.v_start + (h + 1) * op.head_dim]
                vh = vh if vh.dtype == np.uint8 else _int_codes(vh)
                # several P operands (e.g. an exact hi + lo split) accumulate in place
                ph = np.concatenate([np.asarray(p[h]).astype(np.uint8) if op.mode == MatmulMode.UINT8
                                     else _int_codes(p[h]) for p in ps], axis=1)
                parts.append(matmul_golden.matmul(ph, np.concatenate([vh] * len(ps)), op.mode))
            tensors[op.out] = np.concatenate(parts, axis=1)
        elif isinstance(op, Requantize):
            tensors[op.out] = _exec_requantize(op, tensors, params, classes)
        elif isinstance(op, Softmax):
            s = tensors[op.inp]
            tables = params[f"{op.params}.table"]
            tensors[op.out] = np.stack([softmax_golden.softmax(s[h], length, False, 0, 0, tables[h])
                                        for h in range(s.shape[0])])
        elif isinstance(op, LayerNorm16):
            tensors[op.out] = _exec_layernorm(op, tensors, params, classes)
        elif isinstance(op, Activation):
            tensors[op.out] = _exec_activation(op, tensors, params, classes)
        elif isinstance(op, ToE4M3):
            tensors[op.out] = fp32_to_e4m3(tensors[op.inp], params[f"{op.params}.shift"])
        elif isinstance(op, ToInt):
            shift = np.asarray(params[f"{op.params}.shift"])
            if op.per_head:
                shift = shift.reshape(-1, 1, 1)
            tensors[op.out] = fp32_to_int(tensors[op.inp], shift, op.bits)["value"]
        elif isinstance(op, HostPool):
            x = tensors[op.inp][:length].astype(np.float64) * params[f"{op.params}.scale"]
            pooled = x.mean(axis=0)
            result = pooled / max(np.linalg.norm(pooled), 1e-12)
        else:  # pragma: no cover
            raise TypeError(f"unknown op {op!r}")
    if trace is not None:
        trace.update(tensors)
    return result


def embed(model, token_ids_list, pad_to=None):
    """Sentence embeddings (sentences x hidden, float64, unit norm) of a list of token-id arrays."""
    return np.stack([run_tokens(model, ids, pad_to) for ids in token_ids_list])


def embed_int8(model, token_ids_list, pad_to=None):
    """The INT8 program's embeddings (``model.dtype == 'int8'``)."""
    if model.dtype != "int8":
        raise ValueError(f"embed_int8() needs the INT8 model, not {model.dtype}")
    return embed(model, token_ids_list, pad_to)


def embed_e4m3(model, token_ids_list, pad_to=None):
    """The FP8 (E4M3) program's embeddings (``model.dtype == 'e4m3'``)."""
    if model.dtype != "e4m3":
        raise ValueError(f"embed_e4m3() needs the E4M3 model, not {model.dtype}")
    return embed(model, token_ids_list, pad_to)


# --------------------------------------------------------------------------- description

def program_table(model, layer=0, t="T"):
    """Rows ``(op, out, inputs, shape, note)`` describing one layer's ops (for docs)."""
    rows = []
    for op in model.program:
        if getattr(op, "layer", -1) != layer:
            continue
        kind = type(op).__name__
        if isinstance(op, MatMul):
            ins = " + ".join(f"{e[0]}@{e[1]}" for e in op.passes)
            k = sum(model.params[e[1]].shape[0] for e in op.passes)
            n = model.params[op.passes[0][1]].shape[1]
            shape = f"{t}x{k} @ {k}x{n} ({op.mode.name})"
        elif isinstance(op, AttnScores):
            ins = op.inp
            shape = f"{op.heads} x [{t}x{op.head_dim} @ {op.head_dim}x{t}] ({op.mode.name})"
        elif isinstance(op, AttnContext):
            ins = f"{op.p}, {op.v}"
            if isinstance(op.p, tuple):
                ins = " + ".join(f"{p}@{op.v}" for p in op.p)
            shape = f"{op.heads} x [{t}x{t} @ {t}x{op.head_dim}] ({op.mode.name})"
        else:
            ins = getattr(op, "inp", "")
            shape = ""
        rows.append((kind, op.out, ins, shape, op.note))
    return rows
