"""Quantize all-MiniLM-L6-v2 for the accelerator: the INT8 and the FP8 (E4M3) programs.

``build_int8()`` / ``build_e4m3()`` turn the float weights and the calibration set
(``calibration.txt``) into a :class:`sim.golden.minilm_quantized.QuantizedMiniLM`: the op
program (one hardware instruction per op) and every integer parameter it needs.
Deterministic: the same weights, calibration sentences and options give the same bytes.
``load_or_build()`` caches the result under ``build/minilm/`` (building takes under a
minute on one core, mostly the float calibration run and GPTQ). The scheme and the
measured effect of every decision are in docs/minilm.md.

INT8 scheme, per encoder layer (``T`` rows, hidden 384, 12 heads of 32, FFN 1536)::

    x_mm, x_res        two LayerNorm outputs of the previous layer (INT8): x_mm feeds the
                       QKV GEMM (SmoothQuant factors folded into gamma/beta and into W's
                       rows; a separate scale and offset for [CLS] rows), x_res is the
                       residual (per-channel scales chosen to fit the residual pass, below)
    qkv_acc = x_mm @ Wqkv                       MatMul INT8            T x 1152
    qkv     = requant(qkv_acc)                  Q, K per tensor; V per channel
    s_acc   = Q_h @ K_h^T                       AttnScores INT8       12 x T x T
    s       = requant(s_acc)  (1/sqrt(32) folded in; per head)
    p       = softmax(s, length)                UINT8, scale 1/256
    c_acc   = P_h @ V_h                         AttnContext UINT8xINT8
    ctx     = requant(c_acc)                    per channel (SmoothQuant for Wo)
    r1_acc  = ctx @ Wo                          MatMul INT8
    r1      = requant16(r1_acc + x_res * d)     INT16, residual and bias added exactly
    h_mm, h_res = LayerNorm16(r1)               two LayerNorm ops (two parameter sets)
    u_acc   = h_mm @ W1                         MatMul INT8            T x 1536
    u       = requant(u_acc)                    per group of channels, asymmetric
    g       = gelu_table_group(u)               Activation, one table per channel group
    r2_acc  = g @ W2 (+ passes over the outlier columns)   MatMul INT8
    r2      = requant16(r2_acc + h_res * d)
    x_mm, x_res (next layer) = LayerNorm16(r2)

**Offsets** (scheme version 2). Every LayerNorm output is quantized centered: per row
class, an offset per channel is subtracted through the LayerNorm's beta and added back
exactly through the consumer's bias (``offset @ W`` for a GEMM, ``offset`` for the residual
requantizer): class 0 (token rows) on the midpoint of each channel's calibrated range,
class 1 ([CLS]) on the calibration mean of the [CLS] rows, which BERT makes almost the same
vector for every sentence. V is centered on the [CLS] rows' mean V (added back by the
context requantizer's bias, since a row of P sums to 1), the context has per-channel zero
points (they leave through r1's bias). The FFN channels that fire only for [CLS] (1 or 2
per layer in layers 0-3) get a GELU group of their own, and their W2 rows a wider code
range as repeated passes of the same GEMM over those columns (:func:`_split_codes`).

**Residual.** The residual copy's per-channel scale is *defined* as ``d_j * u_j``, where
``u_j`` is the accumulator's scale of output channel j and ``d_j`` an integer, so
``acc + residual * d`` is the exact sum in accumulator units and is rounded once
(``sim.golden.int16_ops.requantize_residual_int16``; the same numbers as accumulating
``ceil(d / 127)`` diagonal INT8 passes in the matmul engine, which would need up to ~100
passes here, see docs/minilm.md).

The FP8 (E4M3) program (``build_e4m3``) is described in docs/minilm.md.
"""

import fcntl
import hashlib
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np

from rtl.layernorm import BETA_BITS, BETA_FRAC
from rtl.matmul.mode import MatmulMode
from rtl.numerics.fp8_format import FP8Format
from sim.golden import activation as activation_golden
from sim.golden import fp8_codec
from sim.golden import layernorm as layernorm_golden
from sim.golden import minilm_float
from sim.golden import minilm_quantized as mq
from sim.golden import softmax as softmax_golden
from sim.golden.requantizer import quantize_multipliers

from . import calibration_sentences
from .tokenizer import encode
from .weights import load_weights, model_dir


__all__ = ["INT8_OPTIONS", "E4M3_OPTIONS", "PLAIN_INT8", "VERSION", "collect_calibration", "gptq",
           "build_int8", "build_e4m3", "load_or_build", "cache_path", "program_macs"]


#: Bumped whenever the scheme changes, so that cached builds are not reused.
VERSION = 3

INT8_OPTIONS = {
    "alpha": 0.5,            # SmoothQuant migration strength (x_mm, h_mm, ctx)
    "gelu_groups": 16,       # FFN channel groups, one GELU table each
    "gelu_in_clip": 6.0,     # GELU input range starts at max(min, -clip): gelu(-6) ~ 0
    "gelu_sort_hi": False,   # sort the FFN channels by their largest input (else largest |input|)
    "gelu_outlier": 2.5,     # FFN channels above 2.5 x the 99th percentile: a group of their own
    "w2_max_passes": 16,     # W2 rows of that group: up to this many passes (127 x passes codes)
    "gptq": True,            # GPTQ rounding (else round to nearest)
    "gptq_damp": 0.1,        # relative Hessian damping
    "head_act": 1.0,         # headroom on per-tensor activation maxima
    "head_channel": 1.25,    # headroom on per-channel maxima (residual copies, output)
    "head_ln16": 1.5,        # headroom on the INT16 LayerNorm inputs
    "head_v": 1.25,          # headroom on V's per-channel maxima
    "cls_class": True,       # separate scales for [CLS] rows where it is free
    "cls_center": True,      # [CLS] rows centered on their calibration mean (offset in the bias)
    "cls_center_res": True,  # the same for the residual copies (offset in the residual requantizer)
    "head_cls": 2.0,         # headroom on the centered [CLS] rows' deviations
    "cls_beta_codes": 1500,  # |beta - offset| / scale at most this (the beta field: < 2047)
    "smooth": True,          # SmoothQuant factors (False: plain per-tensor activations)
    "v_per_channel": True,   # V scale per channel (False: per tensor)
    "v_center": True,        # V centered on the [CLS] rows' mean (added back after P V)
    "act_center": True,      # LayerNorm outputs and the context: per-channel offsets (asymmetric)
    "smooth_centered": False,  # SmoothQuant from the centered token ranges (else from max |x|)
    "ln16_class": False,     # INT16 LayerNorm inputs: a scale per row class
}

#: The plain baseline of docs/minilm.md: per-tensor activations, per-channel weights rounded
#: to nearest, one GELU table, no [CLS] scales (the INT16 LayerNorm inputs and the exact
#: residual stay: without them the result is meaningless, see the docs).
PLAIN_INT8 = {"alpha": 0.5, "gelu_groups": 1, "gelu_outlier": None, "cls_center": False,
              "cls_center_res": False, "v_center": False, "act_center": False, "ln16_class": False,
              "gptq": False, "cls_class": False, "smooth": False,
              "v_per_channel": False}

E4M3_OPTIONS = {
    "gelu_groups": 32,       # FFN channel groups, one GELU table each
    "gelu_in_clip": 6.0,
    "gelu_outlier": 2.5,     # FFN channels above 2.5 x the 99th percentile: a group of their own
    "gelu_offset": True,     # GELU input: per-group offset (in the bias) + power-of-two half-range
    "head_u": 1.0,           # headroom on the GELU input ranges (gelu_offset)
    "u_exact_scale": True,   # GELU input scale per group exact (the non-power-of-two part in W1)
    "v_center": True,        # V centered on the [CLS] rows' mean V (c @ Wo in the output bias)
    "gptq": True,
    "gptq_damp": 0.1,
    "head_channel": 1.25,
    "head_ln16": 1.5,
    "cls_class": True,
    "ln_mantissa": True,     # LayerNorm output scales: an E4M3 significand x 2**k per channel
    "center": True,          # LayerNorm outputs centered per class (tokens: range midpoint; [CLS]: mean)
    "head_cls": 2.0,         # headroom on the centered [CLS] rows' deviations
    "cls_beta_codes": 1500,  # |beta - offset| / scale at most this (the beta field: < 2047)
    "bias_terms": 3,         # E4M3 terms per bias (exact accumulation of their sum)
    "exact_p": True,         # P = hi + lo (two E4M3 passes): the UINT8 probabilities exactly
    "exact_x": False,        # mixed precision: LayerNorm 2 outputs into the QKV GEMM as hi + lo
    "exact_h": True,         # mixed precision: LayerNorm 1 outputs into the W1 GEMM as hi + lo
    "split_g": True,         # mixed precision: GELU output as an E4M3 pair hi + lo
    "split_w": ("wqkv", "wo", "w1", "w2"),  # mixed precision: these weights as hi + lo pairs
}

HIDDEN, HEADS, HEAD_DIM, FFN = 384, 12, 32, 1536
E4M3_MAX = 448.0


# --------------------------------------------------------------------------- calibration

class Calibration:
    """Float64 activations of the calibration set (per tensor name, per sentence)."""

    def __init__(self, weights, token_ids):
        self.collect = {}
        for ids in token_ids:
            minilm_float.forward(weights, ids, self.collect)

    def rows(self, key, which="all"):
        parts = self.collect[key]
        if which == "cls":
            parts = [p[:1] for p in parts]
        elif which == "tok":
            parts = [p[1:] for p in parts]
        return np.concatenate(parts)

    def chmax(self, key, which="all"):
        return np.abs(self.rows(key, which)).max(axis=0)

    def tmax(self, key, which="all"):
        return float(np.abs(self.rows(key, which)).max())

    def scores_max(self, layer):
        """Per head, the largest |score| (scaled by 1/sqrt(d), as the softmax sees it)."""
        out = np.zeros(HEADS)
        for i, s in enumerate(self.collect[f"l{layer}.scores"]):
            out[i % HEADS] = max(out[i % HEADS], float(np.abs(s).max()))
        return out

    def row_weights(self, key):
        """1 / variance of each row of a LayerNorm input: how much an error in that row
        matters after the LayerNorm (used to weight GPTQ's Hessian)."""
        r = self.rows(key)
        return 1.0 / np.maximum(r.var(axis=1), 1e-6)


def collect_calibration(weights, sentences=None):
    return Calibration(weights, encode(sentences if sentences is not None else calibration_sentences()))


# --------------------------------------------------------------------------- GPTQ

def gptq(w, x, quantize_row, damp=0.1, row_weights=None, block=128, row_args=None):
    """GPTQ (Frantar et al. 2022) for ``y = x @ w`` (w: K x N): rounds the K input rows of
    ``w`` one at a time, in order of decreasing activation energy, spreading each row's
    rounding error over the rows not yet rounded through the inverse Hessian
    ``(x^T diag(row_weights) x + damp * mean(diag) * I)^-1``. ``quantize_row`` maps a float
    row (N,) to its quantized float values (``quantize_row(row, row_args[k])`` if
    ``row_args`` is given, one entry per input row k). Returns the quantized K x N float matrix.
    Deterministic (no randomness; ties in the order are broken by index)."""
    w = np.array(w, dtype=np.float64)
    k = w.shape[0]
    xw = x if row_weights is None else x * np.sqrt(row_weights / row_weights.mean())[:, None]
    hessian = xw.T @ xw
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    w[dead] = 0.0
    hessian += damp * np.mean(np.diag(hessian)) * np.eye(k)
    order = np.argsort(-np.diag(hessian), kind="stable")
    w = w[order]
    args = None if row_args is None else [row_args[i] for i in order]
    hessian = hessian[np.ix_(order, order)]
    hinv = np.linalg.cholesky(np.linalg.inv(hessian)).T  # upper triangular
    q = np.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[i1:i2].copy()
        err = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q[i1 + i] = quantize_row(w1[i]) if args is None else quantize_row(w1[i], args[i1 + i])
            e = (w1[i] - q[i1 + i]) / h1[i, i]
            w1[i + 1:] -= np.outer(h1[i, i + 1:], e)
            err[i] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err
    out = np.empty_like(q)
    out[order] = q
    return out


def _int8_weight_codes(w, x, options, row_weights=None, row_limit=None):
    """Per-output-channel symmetric INT8 codes and scales of w (K x N). ``row_limit`` (K,):
    the largest code of each row (default 127; larger for rows that the GEMM repeats in
    extra passes, see :func:`_split_codes`)."""
    limit = np.full(w.shape[0], 127) if row_limit is None else np.asarray(row_limit)
    scale = np.maximum((np.abs(w) / limit[:, None]).max(axis=0), 1e-12)
    if options["gptq"]:
        quantized = gptq(w, x, lambda r, lim: np.clip(np.rint(r / scale), -lim, lim) * scale,
                         options["gptq_damp"], row_weights, row_args=limit)
        codes = np.rint(quantized / scale)
    else:
        codes = np.clip(np.rint(w / scale), -limit[:, None], limit[:, None])
    return codes.astype(np.int64), scale


def _split_codes(codes, parts):
    """Integer codes (|c| <= 127 * parts) as ``parts`` INT8 matrices that sum to them
    (Hermite: sum_i floor((c + i) / n) = c), each within +-127."""
    return [np.floor_divide(codes + i, parts) for i in range(parts)]


def _codes8(values):
    return (np.asarray(values, dtype=np.int64) & 0xFF).astype(np.uint8)


def _smooth_range(cal, key, options):
    """The activation statistic SmoothQuant balances: each channel's largest |x|, or with
    ``smooth_centered`` the half-range of the token rows that is actually quantized
    (``act_center``; the [CLS] rows are centered on their own)."""
    if options["smooth_centered"] and options["act_center"]:
        tok = cal.rows(key, "tok")
        return (tok.max(axis=0) - tok.min(axis=0)) / 2
    return cal.chmax(key)


def _smooth(act_max, w_row_max, alpha, enabled=True):
    """SmoothQuant factors: activation channel j is divided by s_j, W's row j multiplied."""
    if not enabled:
        return np.ones_like(act_max)
    s = np.maximum(act_max, 1e-6) ** alpha / np.maximum(w_row_max, 1e-6) ** (1.0 - alpha)
    return s / np.median(s)


def _layernorm_params(gamma, beta, input_scale, output_scale):
    """LayerNorm16 params for one output scale (N,) -> (gamma_q, beta_q, gamma_frac, eps)."""
    limit = ((1 << (BETA_BITS - 1)) - 1) / (1 << BETA_FRAC) - 1
    beta = np.clip(beta, -limit * output_scale, limit * output_scale)
    gq, bq, gf = layernorm_golden.quantize_params(gamma, beta, output_scale)
    eps = layernorm_golden.quantize_eps(1e-12, input_scale, gamma.shape[0])
    return gq, bq, gf, eps


def _layernorm_param_set(prefix, gamma, beta, input_scale, output_scales, params, offsets=None):
    """Per row class (output_scales: 2 x N) or single (N,) parameter sets. ``offsets``
    (2 x N): per class, a value subtracted from the output before it is quantized (the
    class-1 rows are centered; the consumer adds the offset back through its bias)."""
    output_scales = np.asarray(output_scales, dtype=np.float64)
    input_scales = np.broadcast_to(np.asarray(input_scale, dtype=np.float64), (2,))
    if output_scales.ndim == 1 and input_scales[0] != input_scales[1]:
        output_scales = np.stack([output_scales, output_scales])
    if offsets is not None and output_scales.ndim == 2 and input_scales[0] == input_scales[1] and \
            np.array_equal(output_scales[0], output_scales[1]) and np.array_equal(offsets[0], offsets[1]):
        output_scales, beta, offsets = output_scales[0], beta - offsets[0], None  # one set
    if output_scales.ndim == 1:
        gq, bq, gf, eps = _layernorm_params(gamma, beta, input_scales[0], output_scales)
        params.update({f"{prefix}.gamma": gq, f"{prefix}.beta": bq,
                       f"{prefix}.gamma_frac": np.array([gf]), f"{prefix}.eps": np.array([eps])})
        return
    if offsets is None:
        offsets = np.zeros_like(output_scales)
    sets = [_layernorm_params(gamma, beta - o, i, s) for s, o, i in zip(output_scales, offsets, input_scales)]
    params.update({
        f"{prefix}.gamma": np.stack([s[0] for s in sets]),
        f"{prefix}.beta": np.stack([s[1] for s in sets]),
        f"{prefix}.gamma_frac": np.array([s[2] for s in sets]),
        f"{prefix}.eps": np.array([s[3] for s in sets]),
    })


def _requant_params(prefix, real_scale, bias, zero_point, params):
    real_scale = np.asarray(real_scale, dtype=np.float64)
    m, s = quantize_multipliers(real_scale)
    params[f"{prefix}.multiplier"] = m
    params[f"{prefix}.shift"] = s
    bias = np.asarray(bias)
    if np.abs(bias).max(initial=0) >= 2**31:
        raise ValueError(f"{prefix}: bias does not fit INT32")
    params[f"{prefix}.bias"] = np.broadcast_to(bias, real_scale.shape).astype(np.int64)
    params[f"{prefix}.zero_point"] = np.broadcast_to(np.asarray(zero_point), real_scale.shape).astype(np.int64)


def _tok_center(cal, key, options):
    """Class-0 per-channel offsets: the midpoint of each channel's calibrated range over the
    token rows if ``act_center`` (asymmetric ranges at the cost of a bias term), else 0."""
    tok = cal.rows(key, "tok")
    if not options["act_center"]:
        return np.zeros(tok.shape[1])
    return (tok.max(axis=0) + tok.min(axis=0)) / 2


def _class_scales(cal, key, smooth, options, head, beta):
    """Scales (2 x N) of a smoothed tensor and the class offsets (2 x N): per row class c,
    ``c_max * smooth`` with c_max from the class's largest |x / smooth| (row class 1 =
    [CLS]); without classes both rows are the same. The consumer GEMM's bias adds
    ``offset @ W`` per class (exact). Class 0 (token rows) is centered per channel on its
    range's midpoint with ``act_center``. With ``cls_center``, class 1 is centered: its
    offset is the calibration mean of the [CLS] rows (BERT's [CLS] row is nearly the same
    vector for every sentence), the scale covers the deviations from it (``head_cls``
    headroom), at least what the LayerNorm's beta field needs (|beta - offset| / scale <
    2047: ``cls_beta_codes``)."""
    zero = np.zeros((2, smooth.shape[0]))
    if not options["cls_class"]:
        c = np.abs(cal.rows(key) / smooth).max() * head / 127.0
        return np.stack([c * smooth, c * smooth]), zero
    off0 = _tok_center(cal, key, options)
    tok = np.abs((cal.rows(key, "tok") - off0) / smooth).max() * head / 127.0
    rows = cal.rows(key, "cls")
    if not options["cls_center"]:
        cls = np.abs(rows / smooth).max() * head / 127.0
        return np.stack([tok * smooth, cls * smooth]), np.stack([off0, np.zeros_like(off0)])
    offset = rows.mean(axis=0)
    cls = np.abs((rows - offset) / smooth).max() * options["head_cls"] / 127.0
    cls = max(cls, np.abs((beta - offset) / smooth).max() / options["cls_beta_codes"])
    return np.stack([tok * smooth, cls * smooth]), np.stack([off0, offset])


def _residual_target(cal, key, options):
    """The residual copy's wanted per-channel scale and its class offsets (2 x N): it must
    hold every row, the token rows centered per channel if ``act_center`` and the [CLS]
    rows centered on their mean if ``cls_center_res`` (the offsets go into the residual
    requantizer's bias; with both classes' offsets equal, one parameter set)."""
    head_c = options["head_channel"]
    if not options["cls_class"]:
        target = np.maximum(cal.chmax(key) * head_c, 0.02 * cal.tmax(key)) / 127
        return target, np.zeros((2, target.shape[0]))
    off0 = _tok_center(cal, key, options)
    tok = cal.rows(key, "tok") - off0
    cls = cal.rows(key, "cls")
    if options["cls_center_res"]:
        offset = cls.mean(axis=0)
        chmax = np.maximum(np.abs(tok).max(axis=0) * head_c,
                           np.abs(cls - offset).max(axis=0) * options["head_cls"])
        floor = 0.02 * np.abs(tok).max() * head_c
    else:                       # one parameter set: the [CLS] rows share the token rows' offset
        offset = off0
        top = np.maximum(np.abs(tok).max(axis=0), np.abs(cls - offset).max(axis=0))
        chmax, floor = top * head_c, 0.02 * top.max()
    target = np.maximum(chmax, floor) / 127
    return target, np.stack([off0, offset])


def _ln16_scales(cal, key, options):
    """The INT16 LayerNorm input's scale per row class (2,): the [CLS] rows hold BERT's
    outliers (r2 of layer 0 reaches 223 there, tokens stay within about +-10), and the
    LayerNorm is scale invariant, so each class gets its own (only eps depends on it)."""
    head = options["head_ln16"] / 32767
    if options["cls_class"] and options["ln16_class"]:
        return np.array([cal.tmax(key, "tok"), cal.tmax(key, "cls")]) * head
    return np.full(2, cal.tmax(key) * head)


def _one_set(real_scale, bias):
    """Requantizer scales and biases (2 x N) by row class, as one set (N,) when both classes
    are the same (one instruction instead of one per class)."""
    if np.array_equal(real_scale[0], real_scale[1]) and np.array_equal(bias[0], bias[1]):
        return real_scale[0], bias[0]
    return real_scale, bias


def _two(scale):
    """The same per-channel scale for both row classes (2 x N)."""
    return np.stack([scale, scale])


def _residual_multiplier(prefix, target_scale, unit, params):
    """The residual's per-channel integer multiplier ``d = ceil(target / unit)`` (<= 65535)
    and the residual copy's exact scale ``d * unit`` (``unit``: the accumulator's scale)."""
    d = np.clip(np.ceil(target_scale / unit), 1, 0xFFFF).astype(np.int64)
    params[f"{prefix}.d"] = d
    return d * unit, d


def _gelu_groups(chmax, groups, outlier_ratio=None, hi=None):
    """Channel permutation sorting the FFN channels by calibrated range, and the (start, stop)
    column range of each of ``groups`` groups: equal-size groups, except that the outlier
    channels (largest positive input ``hi`` above ``outlier_ratio`` x its 99th percentile:
    BERT's few FFN channels that fire for [CLS] only, 3-5x any other) get the last group
    to themselves (then ``groups - 1`` equal groups hold the others)."""
    n = len(chmax)
    outliers = np.zeros(n, dtype=bool)
    if outlier_ratio and hi is not None and groups > 1:
        outliers = hi > outlier_ratio * np.percentile(hi, 99)
    key = np.where(outliers, np.inf, chmax)
    order = np.lexsort((hi if hi is not None else chmax, key))
    n_out = int(outliers.sum())
    normal = groups - (1 if n_out else 0)
    bounds = list(np.linspace(0, n - n_out, normal + 1).round().astype(int)) + ([n] if n_out else [])
    return order, tuple((int(bounds[g]), int(bounds[g + 1])) for g in range(len(bounds) - 1)), n_out


# --------------------------------------------------------------------------- INT8

def build_int8(weights=None, calibration=None, **overrides):
    """The INT8 program and its parameters (see the module docstring)."""
    options = dict(INT8_OPTIONS, **overrides)
    w = weights if weights is not None else load_weights()
    cal = calibration if calibration is not None else collect_calibration(w)
    params = {}
    info = {"options": options, "residual_d": {}, "gelu_groups": {}}
    layers = []
    alpha = options["alpha"]
    head_c = options["head_channel"]

    for li, lw in enumerate(w.layers):
        L = f"l{li}"
        plan = {}
        rw_attn = cal.row_weights(f"{L}.res1")
        rw_ffn = cal.row_weights(f"{L}.res2")

        # ---- QKV
        wqkv = np.concatenate([lw.wq, lw.wk, lw.wv], axis=1)
        bqkv = np.concatenate([lw.bq, lw.bk, lw.bv])
        x = cal.rows(f"{L}.x")
        sx = _smooth(_smooth_range(cal, f"{L}.x", options), np.abs(wqkv).max(axis=1), alpha,
                     options["smooth"])
        beta_x = w.emb_ln_beta if li == 0 else w.layers[li - 1].ln2_beta
        x_mm_scale, x_mm_off = _class_scales(cal, f"{L}.x", sx, options, options["head_act"], beta_x)
        codes, s_w = _int8_weight_codes(wqkv * sx[:, None], x / sx, options, rw_attn)
        params[f"{L}.wqkv"] = _codes8(codes)
        unit = x_mm_scale[:, :1] / sx[0] * s_w[None, :]         # 2 x 1152 accumulator scale
        s_q = cal.tmax(f"{L}.q") * options["head_act"] / 127
        s_k = cal.tmax(f"{L}.k") * options["head_act"] / 127
        v_rows = cal.rows(f"{L}.v") - (cal.rows(f"{L}.v", "cls").mean(axis=0) if options["v_center"] else 0)
        s_v = np.maximum(np.abs(v_rows).max(axis=0) * options["head_v"], 0.05 * np.abs(v_rows).max()) / 127
        if not options["v_per_channel"]:
            s_v = np.full(HIDDEN, cal.tmax(f"{L}.v") * options["head_act"] / 127)
        out_scale = np.concatenate([np.full(HIDDEN, s_q), np.full(HIDDEN, s_k), s_v])
        # V is centered on the [CLS] rows' mean value c (V_cls is nearly constant and small,
        # while the sink heads copy it): V - c here, + c in the context requantizer (the
        # probabilities of a row sum to 1)
        v_off = cal.rows(f"{L}.v", "cls").mean(axis=0) if options["v_center"] else np.zeros(HIDDEN)
        b_off = np.concatenate([np.zeros(2 * HIDDEN), v_off])
        bias = np.rint((bqkv - b_off + x_mm_off @ wqkv) / unit)  # class 1: + offset @ W (exact)
        _requant_params(f"{L}.qkv", unit / out_scale, bias, 0, params)
        plan.update(x_mm_scale=x_mm_scale, x_mm_off=x_mm_off, sx=sx, s_wqkv=s_w, s_q=s_q, s_k=s_k, s_v=s_v)

        # ---- attention
        s_s = cal.scores_max(li) * options["head_act"] / 127
        _requant_params(f"{L}.scores", s_q * s_k / math.sqrt(HEAD_DIM) / s_s, np.zeros(HEADS), 0, params)
        params[f"{L}.softmax.table"] = np.stack([softmax_golden.exp_table(s) for s in s_s])
        ctx = cal.rows(f"{L}.ctx")
        sc = _smooth(_smooth_range(cal, f"{L}.ctx", options), np.abs(lw.wo).max(axis=1), alpha,
                     options["smooth"])
        if options["act_center"]:   # per-channel zero points (their sum goes into r1's bias)
            mid = (ctx.max(axis=0) + ctx.min(axis=0)) / 2
            c_ctx = np.abs((ctx - mid) / sc).max() * options["head_act"] / 127.5
            c_ctx = max(c_ctx, np.abs(mid / sc).max() / 127)  # the zero points fit INT8
            s_ctx = c_ctx * sc
            zp_c = np.clip(np.rint(-mid / s_ctx), -128, 127).astype(np.int64)
        else:
            c_ctx = np.abs(ctx / sc).max() * options["head_act"] / 127
            s_ctx = c_ctx * sc
            zp_c = np.zeros(HIDDEN, dtype=np.int64)
        _requant_params(f"{L}.ctx", s_v / 256.0 / s_ctx, np.rint(v_off / (s_v / 256.0)), zp_c, params)
        plan.update(s_s=s_s, s_ctx=s_ctx, sc=sc, v_off=v_off, zp_c=zp_c)

        # ---- output projection + residual
        codes, s_wo = _int8_weight_codes(lw.wo * sc[:, None], ctx / sc, options, rw_attn)
        params[f"{L}.wo"] = _codes8(codes)
        unit_o = c_ctx * s_wo
        target, x_res_off = _residual_target(cal, f"{L}.x", options)
        x_res_scale, d = _residual_multiplier(f"{L}.r1", target, unit_o, params)
        s_r1 = _ln16_scales(cal, f"{L}.res1", options)
        bias_r1 = np.rint((lw.bo + x_res_off) / unit_o) - zp_c @ codes
        _requant_params(f"{L}.r1", *_one_set(unit_o[None, :] / s_r1[:, None], bias_r1), 0, params)
        plan.update(x_res_scale=x_res_scale, x_res_off=x_res_off, s_r1=s_r1, s_wo=s_wo)
        info["residual_d"][f"{L}.attn"] = (int(d.min()), int(d.max()))

        # ---- FFN
        h = cal.rows(f"{L}.h")
        sh = _smooth(_smooth_range(cal, f"{L}.h", options), np.abs(lw.w1).max(axis=1), alpha,
                     options["smooth"])
        h_mm_scale, h_mm_off = _class_scales(cal, f"{L}.h", sh, options, options["head_act"], lw.ln1_beta)
        u_all = cal.rows(f"{L}.ffn_in")
        key = u_all.max(axis=0) if options["gelu_sort_hi"] else np.abs(u_all).max(axis=0)
        order, groups, n_out = _gelu_groups(key, options["gelu_groups"], options["gelu_outlier"],
                                            u_all.max(axis=0))
        w1 = (lw.w1 * sh[:, None])[:, order]
        codes, s_w1 = _int8_weight_codes(w1, h / sh, options, rw_ffn)
        params[f"{L}.w1"] = _codes8(codes)
        unit1 = h_mm_scale[:, :1] / sh[0] * s_w1[None, :]
        u = u_all[:, order]
        g = cal.rows(f"{L}.gelu")[:, order]
        s_u = np.zeros(FFN)
        zp_u = np.zeros(FFN, dtype=np.int64)
        s_g = np.zeros(FFN)
        zp_g = np.zeros(FFN, dtype=np.int64)
        tables = []
        for start, stop in groups:
            hi = u[:, start:stop].max() * options["head_act"]
            lo = max(u[:, start:stop].min(), -options["gelu_in_clip"])
            su = (hi - lo) / 255
            zu = int(np.clip(np.rint(-128 - lo / su), -128, 127))
            g_hi = g[:, start:stop].max() * options["head_act"]
            g_lo = float(activation_golden.gelu(np.array([-0.7517916]))[0])  # GELU's minimum
            sg = (g_hi - g_lo) / 255
            zg = int(np.clip(np.rint(-128 - g_lo / sg), -128, 127))
            s_u[start:stop], zp_u[start:stop], s_g[start:stop], zp_g[start:stop] = su, zu, sg, zg
            tables.append(activation_golden.build_table("gelu", su, sg, zu, zg))
        params[f"{L}.gelu.tables"] = np.stack(tables)
        bias1 = np.rint((lw.b1[order] + h_mm_off @ lw.w1[:, order]) / unit1)  # class 1: + offset @ W1
        _requant_params(f"{L}.u", unit1 / s_u, bias1, zp_u, params)
        w2 = lw.w2[order] * s_g[:, None]
        # the outlier group's rows of W2 (x its large GELU output scale) would set every
        # column's weight scale: they get ``w2_passes`` x the code range, as that many
        # passes over the same GELU columns (K grows by w2_passes - 1 rows per outlier)
        passes = 1
        if n_out:
            normal_max = np.abs(w2[:FFN - n_out]).max(axis=0)
            need = (np.abs(w2[FFN - n_out:]) / np.maximum(normal_max, 1e-12)).max()
            passes = int(min(max(math.ceil(need - 1e-9), 1), options["w2_max_passes"]))
        limit = np.full(FFN, 127)
        limit[FFN - n_out:] = 127 * passes
        codes, s_w2 = _int8_weight_codes(w2, g / s_g, options, rw_ffn, limit)
        parts = _split_codes(codes[FFN - n_out:], passes)
        head = codes.copy()
        head[FFN - n_out:] = parts[0]
        params[f"{L}.w2"] = _codes8(head)
        w2_passes = (("g", f"{L}.w2"),)
        for i in range(1, passes):
            params[f"{L}.w2.x{i}"] = _codes8(parts[i])
            w2_passes += (("g", f"{L}.w2.x{i}", (FFN - n_out, FFN)),)
        info.setdefault("w2_passes", {})[L] = (n_out, passes)
        unit2 = s_w2
        target, h_res_off = _residual_target(cal, f"{L}.h", options)
        h_res_scale, d = _residual_multiplier(f"{L}.r2", target, unit2, params)
        bias2 = np.rint((lw.b2 + h_res_off) / unit2) - zp_g @ codes
        s_r2 = _ln16_scales(cal, f"{L}.res2", options)
        _requant_params(f"{L}.r2", *_one_set(unit2[None, :] / s_r2[:, None], bias2), 0, params)
        plan.update(h_mm_scale=h_mm_scale, h_mm_off=h_mm_off, h_res_off=h_res_off, h_res_scale=h_res_scale,
                    s_r2=s_r2, groups=groups, sh=sh, w2_passes=w2_passes,
                    order=order, s_w1=s_w1, s_u=s_u, zp_u=zp_u, s_g=s_g, zp_g=zp_g, s_w2=s_w2)
        info["residual_d"][f"{L}.ffn"] = (int(d.min()), int(d.max()))
        info["gelu_groups"][L] = [(a, b, float(s_u[a]), float(s_g[a])) for a, b in groups]
        layers.append(plan)

    # ---- host embedding and the LayerNorm parameter sets (they need the next layer's scales)
    s_e = cal.tmax("emb_sum") * options["head_ln16"] / 32767
    params["host.word"] = w.word_embeddings.astype(np.float32)
    params["host.position"] = w.position_embeddings.astype(np.float32)
    params["host.token_type"] = w.token_type_embeddings.astype(np.float32)
    params["host.embed_scale"] = np.array(s_e)
    s_out = cal.chmax("out") * head_c / 127
    params["out.scale"] = s_out

    program = [mq.HostEmbed("e16", note="host: word + position + type, INT16")]
    _layernorm_param_set("ln_emb.mm", w.emb_ln_gamma, w.emb_ln_beta, s_e, layers[0]["x_mm_scale"], params,
                         layers[0]["x_mm_off"])
    _layernorm_param_set("ln_emb.res", w.emb_ln_gamma, w.emb_ln_beta, s_e, _two(layers[0]["x_res_scale"]),
                         params, layers[0]["x_res_off"])
    program += [mq.LayerNorm16("x_mm", "e16", "ln_emb.mm", note="embedding LayerNorm, GEMM copy"),
                mq.LayerNorm16("x_res", "e16", "ln_emb.res", note="embedding LayerNorm, residual copy")]
    for li, (lw, plan) in enumerate(zip(w.layers, layers)):
        L = f"l{li}"
        program += [
            mq.MatMul("qkv_acc", (("x_mm", f"{L}.wqkv"),), MatmulMode.INT8, li, "Q|K|V projection"),
            mq.Requantize("qkv", "qkv_acc", f"{L}.qkv", layer=li, note="Q, K per tensor; V per channel"),
            mq.AttnScores("s_acc", "qkv", 0, HIDDEN, HEADS, HEAD_DIM, MatmulMode.INT8, li, "Q_h K_h^T"),
            mq.Requantize("s", "s_acc", f"{L}.scores", per_head=True, layer=li, note="scores, 1/sqrt(32) folded"),
            mq.Softmax("p", "s", f"{L}.softmax", li, "UINT8 probabilities, valid-length mask"),
            mq.AttnContext("c_acc", "p", "qkv", 2 * HIDDEN, HEADS, HEAD_DIM, MatmulMode.UINT8, li, "P_h V_h"),
            mq.Requantize("ctx", "c_acc", f"{L}.ctx", layer=li, note="context, per channel"),
            mq.MatMul("r1_acc", (("ctx", f"{L}.wo"),), MatmulMode.INT8, li, "output projection"),
            mq.Requantize16("r1", "r1_acc", f"{L}.r1", layer=li, residual="x_res",
                            note="+ bias + residual x_res * d, INT16 LayerNorm input"),
            mq.LayerNorm16("h_mm", "r1", f"{L}.ln1.mm", li, "LayerNorm 1, GEMM copy"),
            mq.LayerNorm16("h_res", "r1", f"{L}.ln1.res", li, "LayerNorm 1, residual copy"),
            mq.MatMul("u_acc", (("h_mm", f"{L}.w1"),), MatmulMode.INT8, li, "FFN up"),
            mq.Requantize("u", "u_acc", f"{L}.u", layer=li, note="GELU input, per channel group"),
            mq.Activation("g", "u", f"{L}.gelu", plan["groups"], layer=li, note="GELU, one table per group"),
            mq.MatMul("r2_acc", plan["w2_passes"], MatmulMode.INT8, li,
                      "FFN down (+ repeated passes over the outlier GELU channels)"),
            mq.Requantize16("r2", "r2_acc", f"{L}.r2", layer=li, residual="h_res",
                            note="+ bias + residual h_res * d, INT16 LayerNorm input"),
        ]
        _layernorm_param_set(f"{L}.ln1.mm", lw.ln1_gamma, lw.ln1_beta, plan["s_r1"], plan["h_mm_scale"],
                             params, plan["h_mm_off"])
        _layernorm_param_set(f"{L}.ln1.res", lw.ln1_gamma, lw.ln1_beta, plan["s_r1"],
                             _two(plan["h_res_scale"]), params, plan["h_res_off"])
        if li + 1 < len(layers):
            nxt = layers[li + 1]
            _layernorm_param_set(f"{L}.ln2.mm", lw.ln2_gamma, lw.ln2_beta, plan["s_r2"], nxt["x_mm_scale"],
                                 params, nxt["x_mm_off"])
            _layernorm_param_set(f"{L}.ln2.res", lw.ln2_gamma, lw.ln2_beta, plan["s_r2"],
                                 _two(nxt["x_res_scale"]), params, nxt["x_res_off"])
            program += [mq.LayerNorm16("x_mm", "r2", f"{L}.ln2.mm", li, "LayerNorm 2, GEMM copy"),
                        mq.LayerNorm16("x_res", "r2", f"{L}.ln2.res", li, "LayerNorm 2, residual copy")]
        else:
            _layernorm_param_set(f"{L}.ln2.out", lw.ln2_gamma, lw.ln2_beta, plan["s_r2"], s_out, params)
            program.append(mq.LayerNorm16("x_out", "r2", f"{L}.ln2.out", li, "LayerNorm 2, output"))
    program.append(mq.HostPool("x_out", "out", note="host: dequantize, mean over valid rows, L2"))
    info["scales"] = {"layers": layers, "s_e": s_e, "s_out": s_out}
    return mq.QuantizedMiniLM("int8", tuple(program), params, HIDDEN, HEADS, info)


# --------------------------------------------------------------------------- FP8 (E4M3)

def _e4m3_round(values):
    """float64 values rounded to E4M3 (RNE, saturating at +-448)."""
    v = np.clip(np.asarray(values, dtype=np.float64), -E4M3_MAX, E4M3_MAX)
    return v.astype(fp8_codec.ML_DTYPES[FP8Format.E4M3]).astype(np.float64)


def _e4m3_codes(values):
    v = np.clip(np.asarray(values, dtype=np.float64), -E4M3_MAX, E4M3_MAX)
    return v.astype(fp8_codec.ML_DTYPES[FP8Format.E4M3]).view(np.uint8)


def _fp32_e4m3_codes(values):
    """E4M3 codes by the hardware encoder's rule (FP32 first, then RNE, saturating)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return fp8_codec.encode(bits, FP8Format.E4M3, True)


def _pow2_exponent(max_abs, limit):
    """The largest k with max_abs * 2**k <= limit."""
    return int(math.floor(math.log2(limit / max(float(max_abs), 1e-30))))


def _signed_bytes(codes):
    codes = np.asarray(codes, dtype=np.int64)
    return np.where(codes >= 128, codes - 256, codes)


def _e4m3_weight_codes(w, x, shift, options, row_weights=None):
    """E4M3 codes of ``w * 2**shift`` (GPTQ with E4M3 rounding, or round to nearest)."""
    scaled = w * 2.0 ** shift
    if options["gptq"]:
        quantized = gptq(scaled, x, _e4m3_round, options["gptq_damp"], row_weights)
    else:
        quantized = _e4m3_round(scaled)
    return _e4m3_codes(quantized)


def _fit_accumulator(ka, kw, limit):
    """Lower the activation and weight exponents (alternately, activation first) until
    ``ka + kw <= limit``: the residual pass can only add ``code * 2**(ka + kw + ...)`` with
    E4M3 operands (a product is at most 448 * 256)."""
    while ka + kw > limit:
        if ka >= kw - 4:
            ka -= 1
        else:
            kw -= 1
    return ka, kw


def _bias_rows(bias, options):
    """Split ``bias`` (already in accumulator units) into ``bias_terms`` E4M3 rows whose sum,
    times the ONES code's value 2**o, is the bias to about 12 significant bits. Returns
    (codes R x N, o)."""
    top = float(np.abs(bias).max(initial=0))
    o = max(0, int(math.ceil(math.log2(top / E4M3_MAX))) + 1) if top > 0 else 0
    if o > 8:
        raise ValueError("bias too large for the ONES operand (2**8 at most)")
    rest = bias / 2.0 ** o
    rows = []
    for _ in range(options["bias_terms"]):
        term = _e4m3_round(rest)
        rows.append(_e4m3_codes(term))
        rest = rest - term
    return np.stack(rows), o


def _fp8_ln_scales(cal, key, options, beta=None):
    """Per-channel LayerNorm output scales 2**(E_c + k_j) for an INT8 output feeding FP8
    GEMMs: k_j per channel (token rows; an integer, or with ``ln_mantissa`` the log2 of an
    E4M3 value), E_c per row class (an integer), and the class offsets (2 x N) subtracted
    before quantization (``center``: tokens on each channel's range midpoint, [CLS] on the
    calibration mean of the [CLS] rows; the consumers add them back exactly, see
    :func:`build_e4m3`). Returns (scales 2 x N, k (N,), E (2,), offsets 2 x N)."""
    head = options["head_channel"]
    n = cal.rows(key, "tok").shape[1]
    offsets = np.zeros((2, n))
    if options["center"]:
        tok = cal.rows(key, "tok")
        offsets[0] = (tok.max(axis=0) + tok.min(axis=0)) / 2
        offsets[1] = cal.rows(key, "cls").mean(axis=0)
        top = np.abs(tok - offsets[0]).max(axis=0)
    elif options["cls_class"]:
        top = cal.chmax(key, "tok")
    else:
        top = cal.chmax(key)
    want = np.maximum(top * head, 1e-6) / 127
    k = np.ceil(np.log2(want)).astype(np.int64)
    if options["ln_mantissa"]:
        # the per-channel scale need not be a power of two (the weights' rows absorb it):
        # an E4M3 significand m_j in (1, 2] times 2**(k_j - 1), the smallest at or above
        # the wanted scale, so that the residual's diagonal stays one E4M3 code per channel
        m = np.minimum(np.ceil(want / 2.0 ** (k - 1) * 8 - 1e-9) / 8, 2.0)
        k = (k - 1) + np.log2(m)
    if options["center"]:
        need = np.abs(cal.rows(key, "cls") - offsets[1]).max(axis=0) * options["head_cls"] / 127 / 2.0 ** k
        if beta is not None:    # the beta field: |beta - offset| / scale < 2047 codes
            need = np.maximum(need, np.abs(beta - offsets[1]) / options["cls_beta_codes"] / 2.0 ** k)
        e_cls = max(int(np.ceil(np.log2(max(need.max(), 1e-6)))), -6)
    elif options["cls_class"]:
        need = cal.chmax(key, "cls") * head / 127 / 2.0 ** k
        e_cls = int(np.ceil(np.log2(max(need.max(), 1e-6))))
    else:
        e_cls = 0
    e = np.array([0, e_cls])
    return 2.0 ** (e[:, None] + k[None, :]), k, e, offsets


def _fp8_input_tables(prefix, e, params):
    """Tables from the LayerNorm's INT8 codes: GEMM input (E4M3 of code * 2**(E_c - E_max))
    and the exact pair hi + lo = code * 2**(E_c - E_max + 1) (the residual; with
    ``exact_x`` / ``exact_h`` also the GEMM input). One set per row class."""
    e_max = int(e.max())
    codes = np.arange(256)
    values = np.where(codes < 128, codes, codes - 256).astype(np.float64)
    gemm, hi, lo = [], [], []
    for ec in e:
        v = values * 2.0 ** (int(ec) - e_max)
        gemm.append(_signed_bytes(_fp32_e4m3_codes(v)))
        v2 = v * 2.0
        h = _e4m3_round(v2)
        assert np.array_equal(_e4m3_round(v2 - h) + h, v2), "residual split must be exact"
        hi.append(_signed_bytes(_e4m3_codes(h)))
        lo.append(_signed_bytes(_e4m3_codes(v2 - h)))
    params[f"{prefix}.e.tables"] = np.stack(gemm)[:, None, :]
    params[f"{prefix}.hi.tables"] = np.stack(hi)[:, None, :]
    params[f"{prefix}.lo.tables"] = np.stack(lo)[:, None, :]
    return e_max


def _e4m3_pair(values):
    """Near-exact E4M3 pair: hi = E4M3(v), lo = E4M3(v - hi) (about 8 significant bits)."""
    hi = _e4m3_round(values)
    return hi, _e4m3_round(values - hi)


def _e4m3_split_weight_codes(w, x, shift, options, row_weights=None):
    """``w * 2**shift`` as two E4M3 matrices hi + lo (mixed precision: about 8 significant
    bits), GPTQ with that rounding. Returns (hi codes, lo codes)."""
    scaled = w * 2.0 ** shift
    pair = lambda r: sum(_e4m3_pair(r))  # noqa: E731
    quantized = gptq(scaled, x, pair, options["gptq_damp"], row_weights) if options["gptq"] else pair(scaled)
    hi = _e4m3_round(quantized)
    lo = quantized - hi
    assert np.array_equal(_e4m3_round(lo), lo), "weight pair must be exact"
    return _e4m3_codes(hi), _e4m3_codes(lo)


def _fit_bias(kw, *biases):
    """Lower the weight exponent until every bias (real units, times 2**kw: accumulator
    units) fits the bias rows (E4M3 terms times a ONES power of two, 2**8 at most)."""
    top = max(float(np.abs(b).max(initial=0)) for b in biases)
    while top * 2.0 ** kw > E4M3_MAX * 2.0 ** 7:
        kw -= 1
    return kw


#: Columns of the [CLS] indicator tensor: ``bias_terms`` columns per exponent o = 0..8,
#: each 2**o in the [CLS] row and 0 elsewhere (an Activation with per-class tables).
CLS_IND_EXPONENTS = 9


def build_e4m3(weights=None, calibration=None, **overrides):
    """The FP8 (E4M3) program: every GEMM in E4M3 (FP32 results, converted by
    :mod:`sim.golden.fp_convert` with power-of-two shifts). Single E4M3 tensors: Q, K, V,
    the context and the QKV GEMM's input; **mixed precision** (``exact_h``, ``split_g``,
    ``split_w``, ``exact_x``): pairs of E4M3 tensors ``hi + lo`` multiplied in two passes
    of the same accumulation (weights, GELU output, the W1 GEMM's input), as already for P
    and the residual. LayerNorm outputs are centered per row class; the [CLS] rows' offsets
    come back through the [CLS] indicator (``cls_ind``) passes (see docs/minilm.md)."""
    options = dict(E4M3_OPTIONS, **overrides)
    w = weights if weights is not None else load_weights()
    cal = calibration if calibration is not None else collect_calibration(w)
    params = {}
    info = {"options": options, "exponents": {}}
    E4 = MatmulMode.E4M3
    head_c = options["head_channel"]
    terms = options["bias_terms"]
    split_w = set(options["split_w"])
    program = [mq.HostEmbed("e16", note="host: word + position + type, INT16")]
    s_e = cal.tmax("emb_sum") * options["head_ln16"] / 32767
    params["host.word"] = w.word_embeddings.astype(np.float32)
    params["host.position"] = w.position_embeddings.astype(np.float32)
    params["host.token_type"] = w.token_type_embeddings.astype(np.float32)
    params["host.embed_scale"] = np.array(s_e)

    def ln_outputs(prefix, gamma, beta, in_scale, key, layer, src, name, exact):
        scales, k, e, offsets = _fp8_ln_scales(cal, key, options, beta)
        _layernorm_param_set(prefix, gamma, beta, in_scale, scales, params,
                             offsets if options["center"] else None)
        e_max = _fp8_input_tables(prefix, e, params)
        ops = [mq.LayerNorm16(name, src, prefix, layer,
                              "LayerNorm (INT8 out, per-channel scales and offsets, [CLS] set)")]
        if not exact:
            ops.append(mq.Activation(f"{name}_e", name, f"{prefix}.e", ((0, HIDDEN),), layer=layer,
                                     note="to E4M3 (table)"))
        ops += [
            mq.Activation(f"{name}_hi", name, f"{prefix}.hi", ((0, HIDDEN),), layer=layer,
                          note="exact pair, high part"),
            mq.Activation(f"{name}_lo", name, f"{prefix}.lo", ((0, HIDDEN),), layer=layer,
                          note="exact pair, low part"),
        ]
        program.extend(ops)
        return k, e_max, offsets

    def weight_passes(name, wt, x_in, row_exp, kw, rw, acts):
        """E4M3 codes of diag(2**row_exp) wt * 2**kw (rows are activation channels), and the
        passes ``acts`` x weights (a weight pair hi + lo: the low part with the first
        activation only; the products lo x lo are below the rounding)."""
        scaled_x = x_in / 2.0 ** row_exp
        key = name.split(".")[-1]
        if key in split_w:
            params[name], params[f"{name}.lo"] = _e4m3_split_weight_codes(
                wt * 2.0 ** row_exp[:, None], scaled_x, kw, options, rw)
            return tuple((a, name) for a in acts) + ((acts[0], f"{name}.lo"),)
        params[name] = _e4m3_weight_codes(wt * 2.0 ** row_exp[:, None], scaled_x, kw, options, rw)
        return tuple((a, name) for a in acts)

    def bias(name, b_acc, cls_extra=None):
        """Bias rows (ONES pass) and, with ``cls_extra`` (accumulator units), the [CLS]
        rows' extra offset as rows of the indicator pass."""
        codes, o = _bias_rows(b_acc, options)
        params[name] = codes
        params[f"{name}.ones"] = np.array(_e4m3_codes(np.array([2.0 ** o]))[0], dtype=np.uint8)
        passes = ((mq.ONES, name),)
        if cls_extra is not None and np.any(cls_extra):
            codes, o = _bias_rows(cls_extra, options)
            params[f"{name}.cls"] = codes
            passes += (("cls_ind", f"{name}.cls", (o * terms, (o + 1) * terms)),)
        return passes

    def residual_diag(name, k_res, e_max, kacc):
        a = k_res + e_max + kacc - 1
        if a.max() > math.log2(E4M3_MAX) or a.min() < -9:
            raise ValueError(f"{name}: residual exponents {a.min()}..{a.max()} outside E4M3")
        d = _e4m3_round(2.0 ** a)   # (exact up to the float rounding of log2 m_j)
        assert np.allclose(d, 2.0 ** a, rtol=1e-12, atol=0), "residual diagonal must be exact"
        params[name] = _e4m3_codes(np.diag(d))

    exact_x, exact_h = options["exact_x"], options["exact_h"]
    beta_x = w.emb_ln_beta
    k_x, emax_x, off_x = ln_outputs("ln_emb", w.emb_ln_gamma, beta_x, s_e, "l0.x", -1, "e16", "x", exact_x)
    if options["center"]:
        # the [CLS] indicator: 2**o in the [CLS] row (row class 1), 0 in the others
        one = np.zeros((2, CLS_IND_EXPONENTS, 256), dtype=np.int64)
        for o in range(CLS_IND_EXPONENTS):
            one[1, o, :] = _signed_bytes(_e4m3_codes(np.array([2.0 ** o])))[0]
        params["cls_ind.tables"] = one
        program.append(mq.Activation("cls_ind", "x", "cls_ind",
                                     tuple((o * terms, (o + 1) * terms) for o in range(CLS_IND_EXPONENTS)),
                                     note="[CLS] indicator (per-class constant tables)"))
    for li, lw in enumerate(w.layers):
        L = f"l{li}"
        rw_attn = cal.row_weights(f"{L}.res1")
        rw_ffn = cal.row_weights(f"{L}.res2")
        x = cal.rows(f"{L}.x")
        # GPTQ's Hessian from the GEMM's actual input: the rows minus their class offsets
        x_c = _center_rows(cal, f"{L}.x", off_x) if options["center"] else x
        # x_e (or hi + lo, which is twice x_e) = (x - offset) * 2**-(k_j + E_max)
        row_exp = (k_x + emax_x).astype(np.float64) - (1 if exact_x else 0)
        # ---- QKV: one weight exponent per Q, K, V block
        kws, outs = [], []
        for blk, (wt, key) in enumerate(((lw.wq, "q"), (lw.wk, "k"), (lw.wv, "v"))):
            kb = _pow2_exponent(np.abs(wt * 2.0 ** row_exp[:, None]).max(), E4M3_MAX) - 1
            b_blk = (lw.bq, lw.bk, lw.bv)[blk]
            if blk == 2 and options["v_center"]:
                b_blk = b_blk - cal.rows(f"{L}.v", "cls").mean(axis=0)
            kws.append(_fit_bias(kb, b_blk + off_x[0] @ wt, (off_x[1] - off_x[0]) @ wt))
            top = cal.rows(f"{L}.{key}") - (cal.rows(f"{L}.v", "cls").mean(axis=0)
                                            if blk == 2 and options["v_center"] else 0)
            outs.append(_pow2_exponent(np.abs(top).max(), E4M3_MAX / 2))
        wqkv_f = np.concatenate([lw.wq, lw.wk, lw.wv], axis=1)
        kw_col = np.repeat(kws, HIDDEN)
        wqkv = wqkv_f * 2.0 ** kw_col
        x_acts = ("x_hi", "x_lo") if exact_x else ("x_e",)
        passes = weight_passes(f"{L}.wqkv", wqkv, x_c, row_exp, 0, rw_attn, x_acts)
        # V centered on the [CLS] rows' mean V (the attention sink's value, copied by most
        # rows): V - c here, + c @ Wo in the output projection's bias (P's rows sum to 1)
        v_off = cal.rows(f"{L}.v", "cls").mean(axis=0) if options["v_center"] else np.zeros(HIDDEN)
        b_qkv = np.concatenate([lw.bq, lw.bk, lw.bv - v_off]) + off_x[0] @ wqkv_f
        passes += bias(f"{L}.bqkv", b_qkv * 2.0 ** kw_col, ((off_x[1] - off_x[0]) @ wqkv_f) * 2.0 ** kw_col)
        program.append(mq.MatMul("qkv_acc", passes, E4, li, "Q|K|V projection + bias rows"))
        params[f"{L}.qkv.shift"] = np.repeat(np.array(outs) - np.array(kws), HIDDEN)
        program.append(mq.ToE4M3("qkv", "qkv_acc", f"{L}.qkv", li, "Q, K, V to E4M3 (2**k per tensor)"))
        kq, kk, kv = outs
        # ---- attention
        raw_max = cal.scores_max(li) * math.sqrt(HEAD_DIM)         # |q.k| before 1/sqrt(d)
        ks = np.array([_pow2_exponent(m, 127) for m in raw_max])
        params[f"{L}.scores.shift"] = ks - kq - kk
        params[f"{L}.softmax.table"] = np.stack([softmax_golden.exp_table(2.0 ** -int(k) / math.sqrt(HEAD_DIM))
                                                 for k in ks])
        u8 = np.arange(256, dtype=np.float64)                  # u / 256 * 2**8
        p_hi = _e4m3_round(u8)
        params[f"{L}.p.tables"] = _signed_bytes(_e4m3_codes(p_hi))[None, :]
        params[f"{L}.plo.tables"] = _signed_bytes(_e4m3_codes(u8 - p_hi))[None, :]
        assert np.array_equal(_e4m3_round(u8 - p_hi) + p_hi, u8)
        p_ops = [mq.Activation("p_e", "p", f"{L}.p", ((0, 10**9),), True, li, "probabilities to E4M3 (table)")]
        if options["exact_p"]:
            p_ops.append(mq.Activation("p_lo", "p", f"{L}.plo", ((0, 10**9),), True, li,
                                       "probabilities, low part (P = hi + lo exactly)"))
        p_names = ("p_e", "p_lo") if options["exact_p"] else "p_e"
        ctx = cal.rows(f"{L}.ctx") - v_off
        kc = _pow2_exponent(np.abs(ctx).max(), E4M3_MAX / 2)
        program += [
            mq.AttnScores("s_acc", "qkv", 0, HIDDEN, HEADS, HEAD_DIM, E4, li, "Q_h K_h^T"),
            mq.ToInt("s", "s_acc", f"{L}.scores", 8, True, li, "scores to INT8 (2**k per head)"),
            mq.Softmax("p", "s", f"{L}.softmax", li, "UINT8 probabilities, valid-length mask"),
            *p_ops,
            mq.AttnContext("c_acc", p_names, "qkv", 2 * HIDDEN, HEADS, HEAD_DIM, E4, li, "P_h V_h"),
            mq.ToE4M3("ctx", "c_acc", f"{L}.ctx", li, "context to E4M3"),
        ]
        # ---- output projection + bias + residual, one accumulation
        k_res, emax_res, off_res = k_x, emax_x, off_x
        kwo = _pow2_exponent(np.abs(lw.wo).max(), E4M3_MAX) - 1
        kc, kwo = _fit_accumulator(kc, kwo, 9 - int(np.ceil((k_res + emax_res).max())))
        b_o = lw.bo + v_off @ lw.wo + off_res[0]
        kwo = _fit_bias(kc + kwo, b_o, off_res[1] - off_res[0]) - kc
        kacc = kc + kwo
        params[f"{L}.ctx.shift"] = np.full(HIDDEN, kc - 8 - kv)
        passes = weight_passes(f"{L}.wo", lw.wo, ctx * 2.0 ** kc, np.zeros(HIDDEN), kwo, rw_attn, ("ctx",))
        passes += bias(f"{L}.bo", b_o * 2.0 ** kacc, (off_res[1] - off_res[0]) * 2.0 ** kacc)
        residual_diag(f"{L}.d1", k_res, emax_res, kacc)
        s16 = _pow2_exponent(cal.tmax(f"{L}.res1") * options["head_ln16"], 32767)
        params[f"{L}.r1.shift"] = np.full(HIDDEN, s16 - kacc)
        program += [
            mq.MatMul("r1_acc", passes + (("x_hi", f"{L}.d1"), ("x_lo", f"{L}.d1")),
                      E4, li, "output projection + bias rows + residual (hi, lo) passes"),
            mq.ToInt("r1", "r1_acc", f"{L}.r1", 16, False, li, "to INT16 (LayerNorm input)"),
        ]
        k_h, emax_h, off_h = ln_outputs(f"{L}.ln1", lw.ln1_gamma, lw.ln1_beta, 2.0 ** -s16, f"{L}.h", li, "r1",
                                        "h", exact_h)
        # ---- FFN
        h = _center_rows(cal, f"{L}.h", off_h) if options["center"] else cal.rows(f"{L}.h")
        u_all = cal.rows(f"{L}.ffn_in")
        u_hi = u_all.max(axis=0)
        u_lo = np.maximum(u_all.min(axis=0), -options["gelu_in_clip"])
        if options["gelu_offset"]:
            order, groups, n_out = _gelu_groups(u_hi - u_lo, options["gelu_groups"], options["gelu_outlier"], u_hi)
        else:
            order, groups, n_out = _gelu_groups(np.abs(u_all).max(axis=0), options["gelu_groups"])
        u = u_all[:, order]
        g = cal.rows(f"{L}.gelu")[:, order]
        kg = _pow2_exponent(np.abs(g).max(), E4M3_MAX / 2)
        gus = np.zeros(FFN, dtype=np.int64)
        u_off = np.zeros(FFN)
        u_col = np.ones(FFN)
        tables = []
        for start, stop in groups:
            if options["gelu_offset"]:
                # asymmetric range [max(min, -clip), max] as an offset (in the bias) and a
                # power-of-two scale for its half-width
                top, bottom = u_hi[order][start:stop].max(), u_lo[order][start:stop].min()
                mid, half = (top + bottom) / 2, (top - bottom) / 2
                gu = _pow2_exponent(half * options["head_u"], 127)
                if options["u_exact_scale"]:
                    # the rest of the scale, in [1, 2), goes into the group's W1 columns
                    # and bias: the group's range fills the INT8 codes
                    u_col[start:stop] = 127 / (half * options["head_u"]) / 2.0 ** gu
            else:
                mid = 0.0
                gu = _pow2_exponent(np.abs(u[:, start:stop]).max() * options["head_channel"], 127)
            gus[start:stop] = gu
            u_off[start:stop] = mid
            codes = np.arange(256)
            real = np.where(codes < 128, codes, codes - 256) * 2.0 ** -gu / u_col[start] + mid
            tables.append(real)
        row_exp_h = (k_h + emax_h).astype(np.float64) - (1 if exact_h else 0)
        w1 = lw.w1[:, order] * u_col
        kw1 = _pow2_exponent(np.abs(w1 * 2.0 ** row_exp_h[:, None]).max(), E4M3_MAX) - 1
        kw1 = _fit_bias(kw1, (lw.b1[order] - u_off) * u_col + off_h[0] @ w1, (off_h[1] - off_h[0]) @ w1)
        h_acts = ("h_hi", "h_lo") if exact_h else ("h_e",)
        passes = weight_passes(f"{L}.w1", w1, h, row_exp_h, kw1, rw_ffn, h_acts)
        params[f"{L}.u.shift"] = gus - kw1
        b_1 = (lw.b1[order] - u_off) * u_col + off_h[0] @ w1
        passes += bias(f"{L}.b1", b_1 * 2.0 ** kw1, ((off_h[1] - off_h[0]) @ w1) * 2.0 ** kw1)
        g_acts = ("g", "g_lo") if options["split_g"] else ("g",)
        program += [
            mq.MatMul("u_acc", passes, E4, li, "FFN up + bias rows"),
            mq.ToInt("u", "u_acc", f"{L}.u", 8, False, li, "GELU input to INT8 (2**k per group)"),
            mq.Activation("g", "u", f"{L}.gelu", groups, layer=li, note="GELU to E4M3, one table per group"),
        ]
        if options["split_g"]:
            program.append(mq.Activation("g_lo", "u", f"{L}.gelu_lo", groups, layer=li,
                                         note="GELU, low part (E4M3 pair)"))
        kw2 = _pow2_exponent(np.abs(lw.w2).max(), E4M3_MAX) - 1
        kg, kw2 = _fit_accumulator(kg, kw2, 9 - int(np.ceil((k_h + emax_h).max())))
        kw2 = _fit_bias(kg + kw2, lw.b2 + off_h[0], off_h[1] - off_h[0]) - kg
        kacc2 = kg + kw2
        g_real = np.stack([minilm_float.gelu(real) * 2.0 ** kg for real in tables])
        g_hi = _fp32_e4m3_codes(g_real)
        params[f"{L}.gelu.tables"] = _signed_bytes(g_hi)
        if options["split_g"]:   # the low part: E4M3 of what the high part's rounding left
            hi = g_hi.view(fp8_codec.ML_DTYPES[FP8Format.E4M3]).astype(np.float64)
            params[f"{L}.gelu_lo.tables"] = _signed_bytes(_e4m3_codes(g_real - hi))
        passes = weight_passes(f"{L}.w2", lw.w2[order], g * 2.0 ** kg, np.zeros(FFN), kw2, rw_ffn, g_acts)
        passes += bias(f"{L}.b2", (lw.b2 + off_h[0]) * 2.0 ** kacc2, (off_h[1] - off_h[0]) * 2.0 ** kacc2)
        residual_diag(f"{L}.d2", k_h, emax_h, kacc2)
        s16b = _pow2_exponent(cal.tmax(f"{L}.res2") * options["head_ln16"], 32767)
        params[f"{L}.r2.shift"] = np.full(HIDDEN, s16b - kacc2)
        program += [
            mq.MatMul("r2_acc", passes + (("h_hi", f"{L}.d2"), ("h_lo", f"{L}.d2")),
                      E4, li, "FFN down + bias rows + residual (hi, lo) passes"),
            mq.ToInt("r2", "r2_acc", f"{L}.r2", 16, False, li, "to INT16 (LayerNorm input)"),
        ]
        info["exponents"][L] = {"qkv_w": kws, "q": kq, "k": kk, "v": kv, "ctx": kc, "wo": kwo,
                                "acc1": kacc, "w1": kw1, "gelu": kg, "w2": kw2, "acc2": kacc2,
                                "r1_int16": s16, "r2_int16": s16b}
        if li + 1 < len(w.layers):
            k_x, emax_x, off_x = ln_outputs(f"{L}.ln2", lw.ln2_gamma, lw.ln2_beta, 2.0 ** -s16b, f"l{li + 1}.x",
                                            li, "r2", "x", exact_x)
        else:
            s_out = cal.chmax("out") * head_c / 127
            params["out.scale"] = s_out
            _layernorm_param_set(f"{L}.ln2.out", lw.ln2_gamma, lw.ln2_beta, 2.0 ** -s16b, s_out, params)
            program.append(mq.LayerNorm16("x_out", "r2", f"{L}.ln2.out", li, "LayerNorm 2, output"))
    program.append(mq.HostPool("x_out", "out", note="host: dequantize, mean over valid rows, L2"))
    return mq.QuantizedMiniLM("e4m3", tuple(program), params, HIDDEN, HEADS, info)


def _center_rows(cal, key, offsets):
    """Calibration rows of ``key`` minus their class's offset (row 0 of each sentence: class 1)."""
    parts = [p - offsets[0] for p in cal.collect[key]]
    for p, raw in zip(parts, cal.collect[key]):
        p[0] = raw[0] - offsets[1]
    return np.concatenate(parts)


def program_macs(model, lengths):
    """Multiply-accumulates of the program over sequences of the given lengths: K x N x rows
    per MatMul pass (bias and residual passes included), and the attention GEMMs."""
    total = 0
    for op in model.program:
        for t in lengths:
            if isinstance(op, mq.MatMul):
                for entry in op.passes:
                    wgt = model.params[entry[1]]
                    k = wgt.shape[0] if len(entry) < 3 or entry[0] == mq.ONES else entry[2][1] - entry[2][0]
                    total += k * wgt.shape[1] * t
            elif isinstance(op, mq.AttnScores):
                total += op.heads * t * op.head_dim * t
            elif isinstance(op, mq.AttnContext):
                total += op.heads * t * t * op.head_dim * (len(op.p) if isinstance(op.p, tuple) else 1)
    return total


# --------------------------------------------------------------------------- cache

def _fingerprint(dtype, options):
    folder = model_dir()
    stat = (folder / "model.safetensors").stat()
    calibration = (Path(__file__).resolve().parent / "calibration.txt").read_bytes()
    key = json.dumps({"dtype": dtype, "options": options, "version": VERSION,
                      "weights": [stat.st_size], "numpy": np.__version__},
                     sort_keys=True).encode() + calibration
    return hashlib.sha256(key).hexdigest()[:16]


def cache_path(dtype, options, cache_dir=None):
    root = Path(cache_dir) if cache_dir is not None else Path(__file__).resolve().parents[2] / "build" / "minilm"
    return root / f"minilm-{dtype}-{_fingerprint(dtype, options)}.pkl"


def load_or_build(dtype="int8", cache_dir=None, weights=None, calibration=None, **overrides):
    """The quantized model for ``dtype`` ("int8" or "e4m3"), from the cache in build/minilm/
    if present (keyed by the options, the scheme version, the weights and the calibration
    file), else built and cached."""
    if dtype not in ("int8", "e4m3"):
        raise ValueError(f"dtype must be 'int8' or 'e4m3', not {dtype!r}")
    options = dict(INT8_OPTIONS if dtype == "int8" else E4M3_OPTIONS, **overrides)
    path = cache_path(dtype, options, cache_dir)
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    # One builder per model: a process that finds another building it (pytest-xdist
    # workers, two CLI runs) waits for it and loads its result.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                with open(path, "rb") as f:
                    return pickle.load(f)
            builder = build_int8 if dtype == "int8" else build_e4m3
            model = builder(weights, calibration, **options)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
            return model
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
