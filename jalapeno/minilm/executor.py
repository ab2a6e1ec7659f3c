"""Run a quantized all-MiniLM-L6-v2 program on the accelerator, a batch of sentences at once.

:class:`ProgramExecutor` takes a :class:`sim.golden.minilm_quantized.QuantizedMiniLM` (the
program of hardware ops that ``jalapeno/minilm/quantize.py`` builds) and runs it on an
:class:`~jalapeno.accelerator.Accelerator`; its results equal the golden interpreter
(:func:`sim.golden.minilm_quantized.run_tokens`) bit for bit.

**Selective batching.** A batch of B sequences (lengths T_1 .. T_B) is one matrix of
sum(T_i) rows, the sequences' tokens concatenated: every row-wise op (GEMM, requantizer,
LayerNorm, activation) runs once over all rows, attention per sequence and head (all of a
layer's heads in one program).
Row classes (a second parameter set for the first row of each sequence, [CLS]): the rows
are permuted so the [CLS] rows come first, and the instructions' ``cls_rows`` field points
them at the class-1 parameters (one program). A MatMul whose INT32 output goes only to a
Requantize or Requantize16 (INT16, with the residual add) runs with it as one ``linear``:
the GEMMs requantize in their post op, so the MatMul's INT32 output is never formed (nor
traced).

Op mapping (each on the RTL; only the embedding lookup and the pooling run on the host):

=================================================  =============================================
program ops                                        accelerator
=================================================  =============================================
MatMul                                             ``matmul`` (passes concatenated along K)
MatMul -> Requantize / Requantize16 (+ residual)  one ``linear`` (``out_bits=16``,
(INT8 mode)                                        ``residual``; ``cls_rows`` by row class)
AttnScores -> Requantize (per head) -> Softmax     ``attention_heads``: every sequence and head
-> AttnContext -> Requantize (context)             in one program, S and P stay on chip
Requantize / Requantize16 (+ residual)             ``requantize`` (``out_bits=16``, ``residual``)
LayerNorm16                                        ``layernorm(..., in_bits=16)``
Activation (column groups)                         ``activation_blocks``: every group (and row
                                                   class) with its table, one program
HostEmbed, HostPool                                host
=================================================  =============================================

**The FP8 (E4M3) program** runs on a core built with the FP8 modes (the ``full`` preset):

=================================================  =============================================
program ops                                        accelerator
=================================================  =============================================
MatMul (E4M3; bias rows: the ``ONES`` operand)     ``matmul(..., to=...)``: the GEMM's CONVERT
-> ToE4M3 / ToInt                                  post op, FP32 sums never leave the core;
                                                   ``ONES`` passes are columns of the constant
                                                   E4M3 code in A
AttnScores -> ToInt (per head) -> Softmax          per sequence and head: ``matmul(to="int8")``
-> Activation (P to E4M3 hi, lo) -> AttnContext    for the scores, ``softmax`` per head over all
-> ToE4M3                                          sequences, each P table once over all heads
                                                   and sequences, ``matmul(to="e4m3")`` over the
                                                   P parts for the context
LayerNorm16, Activation                            as in the INT8 program
=================================================  =============================================
"""

from dataclasses import dataclass, field

import numpy as np

from rtl.matmul.mode import MatmulMode
from sim.golden import minilm_quantized as mq

from ..accelerator import AttentionHead


__all__ = ["ProgramExecutor", "BatchStats"]


@dataclass
class BatchStats:
    """What one batch cost on the device (sums of the hardware counters of every program)."""
    sequences: int = 0
    rows: int = 0
    programs: int = 0
    cycles: int = 0
    mac_cycles: int = 0
    useful_macs: int = 0
    lanes: int = 0
    by_op: dict = field(default_factory=dict)

    @property
    def mac_utilization(self):
        """Useful MACs / (cycles x lanes^2): how much of the array's peak the batch used."""
        return self.useful_macs / max(1, self.cycles * self.lanes * self.lanes)

    @property
    def array_busy(self):
        """Cycles the array computed / cycles (counts padding and idle PEs as busy)."""
        return self.mac_cycles / max(1, self.cycles)

    def add(self, other):
        """Accumulate another batch's figures into these."""
        for name in ("sequences", "rows", "programs", "cycles", "mac_cycles", "useful_macs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for op, cycles in other.by_op.items():
            self.by_op[op] = self.by_op.get(op, 0) + cycles

    def as_dict(self):
        return {"sequences": self.sequences, "rows": self.rows, "programs": self.programs,
                "cycles": self.cycles, "mac_cycles": self.mac_cycles,
                "useful_macs": self.useful_macs, "mac_utilization": round(self.mac_utilization, 4),
                "array_busy": round(self.array_busy, 4),
                "cycles_by_op": dict(sorted(self.by_op.items()))}


def _codes(x):
    """8-bit codes (uint8) of an INT8 tensor (or an already uint8 one)."""
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else (x.astype(np.int64) & 0xFF).astype(np.uint8)


class ProgramExecutor:
    """Runs ``model.program`` on ``accelerator`` (see the module docstring).

    Parameters
    ----------
    accelerator : jalapeno.accelerator.Accelerator
    model : sim.golden.minilm_quantized.QuantizedMiniLM
        The INT8 program (``model.dtype == "int8"``).
    """

    def __init__(self, accelerator, model):
        if model.dtype not in ("int8", "e4m3"):
            raise ValueError(f"unknown program dtype {model.dtype!r}")
        if model.dtype == "e4m3" and not (accelerator.fp8 and accelerator.requantizer):
            raise ValueError("the E4M3 program needs a core with the FP8 modes and their "
                             "converters (the 'full' preset: --core full)")
        self.accelerator = accelerator
        self.model = model
        self._check_fits()

    def _check_fits(self):
        acc = self.accelerator
        hidden = self.model.hidden
        if hidden % acc.lanes or hidden > acc.max_hidden:
            raise ValueError(f"the core's LayerNorm takes rows of at most {acc.max_hidden} "
                             f"elements in multiples of {acc.lanes}; the model's hidden size "
                             f"is {hidden}")

    # -- Public ---------------------------------------------------------------------------

    def run(self, token_ids, *, trace=None, layers=None, progress=None):
        """Embeddings (B x hidden, float64, unit norm) of a batch of token-id sequences.

        ``trace``: a dict that receives every tensor computed (rows of all sequences
        concatenated); ``layers``: run only the ops of layers < ``layers`` (and the
        embedding LayerNorm) and return None (for tests); ``progress(done, total, op)``
        is called before each op. Returns ``(embeddings, BatchStats)``.
        """
        seqs = [np.asarray(ids, dtype=np.int64) for ids in token_ids]
        if not seqs:
            raise ValueError("the batch is empty")
        lengths = [len(s) for s in seqs]
        if min(lengths) < 1:
            raise ValueError("every sequence needs at least one token")
        acc = self.accelerator
        longest = max(lengths)
        if longest > acc.max_rows or -(-longest // acc.lanes) * acc.lanes > acc.max_length:
            raise ValueError(f"a sequence of {longest} tokens exceeds the core (at most "
                             f"{min(acc.max_rows, acc.max_length)})")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        rows = int(sum(lengths))
        classes = np.zeros(rows, dtype=np.int64)
        classes[starts] = 1
        stats = BatchStats(sequences=len(seqs), rows=rows, lanes=acc.lanes)
        ctx = _Context(seqs, lengths, starts, classes, stats)
        program = self._ops(layers)
        result = None
        for i, step in enumerate(program):
            if progress is not None:
                progress(i, len(program), step)
            result = self._execute(step, ctx)
        if trace is not None:
            trace.update(ctx.tensors)
        return (None if layers is not None else result), stats

    # -- Program ------------------------------------------------------------------------

    def _ops(self, layers):
        """The program with each attention chain grouped into one ``_Attention`` step."""
        ops = [op for op in self.model.program
               if layers is None or getattr(op, "layer", -1) < layers]
        if layers is not None:
            ops = [op for op in ops if not isinstance(op, mq.HostPool)]
        steps = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, mq.AttnScores) and MatmulMode(op.mode).is_fp8:
                chain = _fp8_attention_chain(ops, i)
                steps.append(_AttentionFP8(*chain))
                i += len(chain)
            elif self._convertible(op, ops[i + 1] if i + 1 < len(ops) else None, ops[i + 2:]):
                steps.append(_Convert(op, ops[i + 1]))
                i += 2
            elif isinstance(op, mq.AttnScores):
                chain = ops[i:i + 5]
                kinds = [type(o) for o in chain]
                if kinds != [mq.AttnScores, mq.Requantize, mq.Softmax, mq.AttnContext,
                             mq.Requantize] or not chain[1].per_head:
                    raise NotImplementedError(f"attention ops in an unsupported order at {op}")
                steps.append(_Attention(*chain))
                i += 5
            elif self._fusable(op, ops[i + 1] if i + 1 < len(ops) else None, ops[i + 2:]):
                steps.append(_Linear(op, ops[i + 1]))
                i += 2
            else:
                steps.append(op)
                i += 1
        return steps

    def _convertible(self, matmul, nxt, later):
        """An FP8 MatMul whose FP32 output only feeds the next op, a ToE4M3 or ToInt (per
        column): one ``matmul(to=...)``."""
        if (not isinstance(matmul, mq.MatMul) or not MatmulMode(matmul.mode).is_fp8
                or type(nxt) not in (mq.ToE4M3, mq.ToInt) or nxt.inp != matmul.out
                or getattr(nxt, "per_head", False)):
            return False
        return _dead_after(matmul.out, later)

    def _fusable(self, matmul, nxt, later):
        """A MatMul whose INT32 output only feeds the next op, a Requantize (INT8) or
        Requantize16 (INT16, with or without the residual) per channel, with one parameter set
        or two row classes of them: one ``linear`` (the INT32 sums never leave the core)."""
        if (not isinstance(matmul, mq.MatMul) or type(nxt) not in (mq.Requantize, mq.Requantize16)
                or nxt.inp != matmul.out or nxt.per_head
                or MatmulMode(matmul.mode) != MatmulMode.INT8):
            return False
        names = ("bias", "multiplier", "shift", "zero_point")
        params = self.model.params
        shapes = {np.shape(params[f"{nxt.params}.{n}"])[:-1] for n in names}
        if not shapes <= {(), (2,)}:
            return False
        return _dead_after(matmul.out, later)

    def _execute(self, op, ctx):
        if isinstance(op, mq.HostEmbed):
            return self._host_embed(op, ctx)
        if isinstance(op, mq.HostPool):
            return self._host_pool(op, ctx)
        handler = {
            mq.MatMul: self._matmul,
            _Linear: self._linear,
            _Attention: self._attention,
            _Convert: self._convert,
            _AttentionFP8: self._attention_fp8,
            mq.Requantize: self._requantize,
            mq.Requantize16: self._requantize,
            mq.LayerNorm16: self._layernorm,
            mq.Activation: self._activation,
        }.get(type(op))
        if handler is None:
            raise NotImplementedError(f"{type(op).__name__} has no hardware mapping yet")
        before = ctx.stats.cycles
        handler(op, ctx)
        name = {_Attention: "Attention", _AttentionFP8: "Attention", _Linear: "MatMul+Requantize",
                _Convert: "MatMul+Convert"}.get(type(op), type(op).__name__)
        ctx.stats.by_op[name] = ctx.stats.by_op.get(name, 0) + ctx.stats.cycles - before
        return None

    def _account(self, ctx, useful_macs=0):
        s = self.accelerator.last_stats
        if s is None:
            return
        ctx.stats.programs += 1
        ctx.stats.cycles += s["cycles"]
        ctx.stats.mac_cycles += s["mac_cycles"]
        ctx.stats.useful_macs += int(useful_macs)

    # -- Host ops -------------------------------------------------------------------------

    def _host_embed(self, op, ctx):
        p = self.model.params
        parts = []
        for ids in ctx.seqs:
            e = (p["host.word"][ids].astype(np.float64)
                 + p["host.position"][:len(ids)].astype(np.float64)
                 + p["host.token_type"][0].astype(np.float64))
            parts.append(np.clip(np.rint(e / float(p["host.embed_scale"])), -32768, 32767))
        ctx.tensors[op.out] = np.concatenate(parts).astype(np.int64)

    def _host_pool(self, op, ctx):
        x = ctx.tensors[op.inp].astype(np.float64) * self.model.params[f"{op.params}.scale"]
        out = []
        for start, length in zip(ctx.starts, ctx.lengths):
            pooled = x[start:start + length].mean(axis=0)
            out.append(pooled / max(np.linalg.norm(pooled), 1e-12))
        return np.stack(out)

    # -- Device ops -----------------------------------------------------------------------

    def _matmul(self, op, ctx):
        a, w = self._operands(op, ctx)
        ctx.tensors[op.out] = self.accelerator.matmul(a, w, op.mode).astype(np.int64)
        self._account(ctx, a.shape[0] * a.shape[1] * w.shape[1])

    def _linear(self, step, ctx):
        """MatMul -> Requantize(16) as one ``linear``; by row class with the class-1 rows
        first; INT16 and the residual in the GEMM's post op."""
        a, w = self._operands(step.matmul, ctx)
        rq = step.requantize
        kwargs = self._requant_kwargs(rq, ctx)
        order = kwargs.pop("order")
        y = self.accelerator.linear(a[order], w, mode=step.matmul.mode, **kwargs)
        out = np.empty(y.shape, dtype=np.int64)
        out[order] = y
        ctx.tensors[rq.out] = out
        self._account(ctx, a.shape[0] * a.shape[1] * w.shape[1])

    def _requant_kwargs(self, op, ctx):
        """A Requantize(16)'s parameters as ``linear`` / ``requantize`` keywords, with the
        row ``order`` they apply to: with two parameter sets the class-1 rows first
        (``cls_rows``)."""
        params = self.model.params
        p = {n: np.asarray(params[f"{op.params}.{n}"]) for n in
             ("bias", "multiplier", "shift", "zero_point")}
        kwargs = {}
        if isinstance(op, mq.Requantize16):
            kwargs["out_bits"] = 16
        if p["bias"].ndim == 2:
            order, ones = self._class_order(ctx)
            kwargs.update({n: v[0] for n, v in p.items()})
            kwargs.update({f"cls_{n}": v[1] for n, v in p.items()})
            kwargs["cls_rows"] = ones
        else:
            order = np.arange(len(ctx.classes))
            kwargs.update(p)
        if isinstance(op, mq.Requantize16) and op.residual:
            kwargs["residual"] = ctx.tensors[op.residual][order]
            kwargs["residual_multiplier"] = params[f"{op.params}.d"]
        kwargs["order"] = order
        return kwargs

    def _operands(self, op, ctx):
        """A MatMul's passes concatenated along K: (A codes, W codes)."""
        params = self.model.params
        a_parts, w_parts = [], []
        rows = len(ctx.classes)
        for entry in op.passes:
            a_name, w_name = entry[0], entry[1]
            if a_name == mq.ONES:       # bias rows: a column of the constant code per W row
                w = params[w_name]
                a_parts.append(np.full((rows, w.shape[0]), params[f"{w_name}.ones"][()], np.uint8))
                w_parts.append(w)
                continue
            a = ctx.tensors[a_name]
            if len(entry) > 2:
                a = a[:, entry[2][0]:entry[2][1]]
            a_parts.append(_codes(a))
            w_parts.append(params[w_name])
        a = np.concatenate(a_parts, axis=1)
        w = np.concatenate(w_parts, axis=0)
        return a, w

    def _class_order(self, ctx):
        """Row order with the class-1 rows first, and how many they are."""
        ones = np.flatnonzero(ctx.classes == 1)
        return np.concatenate([ones, np.flatnonzero(ctx.classes != 1)]), len(ones)

    def _requantize(self, op, ctx):
        """One ``requantize``; with two parameter sets, the class-1 rows permuted first and
        ``cls_rows`` (one program)."""
        acc = ctx.tensors[op.inp]
        kwargs = self._requant_kwargs(op, ctx)
        order = kwargs.pop("order")
        out = np.empty(acc.shape, dtype=np.int64)
        out[order] = self.accelerator.requantize(acc[order], **kwargs)
        self._account(ctx)
        ctx.tensors[op.out] = out

    def _layernorm(self, op, ctx):
        """One ``layernorm`` (INT16 input); with two parameter sets, the class-1 rows permuted
        first and ``cls_rows`` (one program, a TABLE switching between the sets)."""
        params = self.model.params
        x = ctx.tensors[op.inp]
        gamma = np.asarray(params[f"{op.params}.gamma"])
        beta = np.asarray(params[f"{op.params}.beta"])
        gamma_frac = np.atleast_1d(params[f"{op.params}.gamma_frac"])
        eps = np.atleast_1d(params[f"{op.params}.eps"])
        out = np.empty(x.shape, dtype=np.int64)
        if gamma.ndim == 2 and gamma.shape[0] == 2:
            order, ones = self._class_order(ctx)
            k1 = 1 if len(gamma_frac) > 1 else 0
            k1e = 1 if len(eps) > 1 else 0
            out[order] = self.accelerator.layernorm(
                x[order], gamma[0], beta[0], int(gamma_frac[0]), int(eps[0]), in_bits=16,
                cls_rows=ones, cls_gamma=gamma[1], cls_beta=beta[1],
                cls_gamma_frac=int(gamma_frac[k1]), cls_eps=int(eps[k1e]))
        else:
            out[:] = self.accelerator.layernorm(x, gamma, beta, int(gamma_frac[0]), int(eps[0]),
                                                in_bits=16)
        self._account(ctx)
        ctx.tensors[op.out] = out

    def _convert(self, step, ctx):
        """An FP8 MatMul and its ToE4M3 / ToInt as one ``matmul(to=...)``."""
        a, w = self._operands(step.matmul, ctx)
        conv = step.convert
        to = "e4m3" if isinstance(conv, mq.ToE4M3) else f"int{conv.bits}"
        shift = np.asarray(self.model.params[f"{conv.params}.shift"])
        y = self.accelerator.matmul(a, w, step.matmul.mode, to=to, shift=shift)
        ctx.tensors[conv.out] = y if to == "e4m3" else y.astype(np.int64)
        self._account(ctx, a.shape[0] * a.shape[1] * w.shape[1])

    def _attention_fp8(self, step, ctx):
        """The FP8 attention chain (see the module docstring): scores and context GEMMs per
        sequence and head, the softmax per head over all sequences, each P table once."""
        scores, to_int, softmax, *acts, context, to_e4m3 = step.ops
        acc = self.accelerator
        params = self.model.params
        d, heads = scores.head_dim, scores.heads
        qkv, v_all = ctx.tensors[scores.inp], ctx.tensors[context.v]
        s_shift = np.broadcast_to(np.asarray(params[f"{to_int.params}.shift"]).reshape(-1), (heads,))
        c_shift = np.broadcast_to(np.asarray(params[f"{to_e4m3.params}.shift"]), (heads * d,))
        tables = np.asarray(params[f"{softmax.params}.table"])
        width = max(ctx.lengths)

        def cols(base, h):
            return slice(base + h * d, base + (h + 1) * d)
        # Scores per sequence and head, to INT8 on the core; softmax per head (all sequences,
        # rows padded to the longest and masked by their length).
        probs = np.zeros((heads * sum(ctx.lengths), width), np.int64)
        row_of = []
        r = 0
        for h in range(heads):
            s_rows, lengths, first = [], [], r
            for start, length in zip(ctx.starts, ctx.lengths):
                rows = slice(start, start + length)
                s = acc.matmul(qkv[rows, cols(scores.q_start, h)], qkv[rows, cols(scores.k_start, h)].T,
                               scores.mode, to="int8", shift=int(s_shift[h]))
                self._account(ctx, length * length * d)
                padded = np.zeros((length, width), np.int64)
                padded[:, :length] = s
                s_rows.append(padded)
                lengths += [length] * length
                row_of.append((h, start, length, r))
                r += length
            probs[first:r] = acc.softmax(np.concatenate(s_rows), tables[h], lengths=lengths)
            self._account(ctx)
        # P through each table (E4M3 hi, lo), all heads and sequences at once.
        p_signed = np.where(probs >= 128, probs - 256, probs)
        parts = {}
        for act in acts:
            table = np.asarray(params[f"{act.params}.tables"])
            if act.inp != softmax.out or not act.unsigned_input or table.shape != (1, 256):
                raise NotImplementedError(f"unsupported activation in the FP8 attention: {act}")
            parts[act.out] = _codes(acc.activation(p_signed, table[0]))
            self._account(ctx)
        names = context.p if isinstance(context.p, tuple) else (context.p,)
        out = np.zeros((qkv.shape[0], heads * d), np.uint8)
        for h, start, length, r in row_of:
            rows = slice(start, start + length)
            p = np.concatenate([parts[name][r:r + length, :length] for name in names], axis=1)
            v = _codes(v_all[rows, cols(context.v_start, h)])
            out[rows, cols(0, h)] = acc.matmul(p, np.concatenate([v] * len(names)), context.mode,
                                               to="e4m3", shift=c_shift[cols(0, h)])
            self._account(ctx, length * length * d * len(names))
        ctx.tensors[to_e4m3.out] = out

    def _activation(self, op, ctx):
        """Every column group (and row class) with its own table, in one program per part of
        the rows that fits on chip (``activation_blocks``; class-1 rows permuted first)."""
        acc = self.accelerator
        x = ctx.tensors[op.inp]
        if op.unsigned_input:       # UINT8 codes: the same byte read as INT8
            x = np.where(x >= 128, x - 256, x)
        tables = np.asarray(self.model.params[f"{op.params}.tables"])
        by_class = tables.ndim == 3
        order, ones = self._class_order(ctx) if by_class else (np.arange(x.shape[0]), 0)
        # Columns no group covers are not computed (they are 0, as in the golden model).
        covered = max(min(stop, x.shape[1]) for _, stop in op.groups)
        if sorted(op.groups)[0][0] != 0 or any(
                a[1] != b[0] for a, b in zip(sorted(op.groups), sorted(op.groups)[1:])):
            raise NotImplementedError(f"{op.out}: activation groups must be contiguous from 0")
        full = x
        x = x[:, :covered]
        xp = x[order]
        words = -(-x.shape[1] // acc.lanes)
        # rows per program: x fits INP; the blocks' outputs (a word shared by two groups
        # is written by both) fit OUT
        part = max(1, min(acc.inp_words // words, acc.out_words // (words + len(op.groups))))
        out = np.empty(x.shape, dtype=np.int64)
        for p0 in range(0, xp.shape[0], part):
            p1 = min(p0 + part, xp.shape[0])
            spans = [(0, p1 - p0, 0)]           # (first row, stop, class) within the part
            if by_class:
                split = min(max(ones - p0, 0), p1 - p0)
                spans = [(0, split, 1), (split, p1 - p0, 0)]
            blocks = [(r0, r1, start, min(stop, x.shape[1]), tables[c, g] if by_class else tables[g])
                      for g, (start, stop) in enumerate(op.groups)
                      for r0, r1, c in spans if r1 > r0]
            out[order[p0:p1]] = acc.activation_blocks(xp[p0:p1], blocks)
            self._account(ctx)
        if covered < full.shape[1]:
            out = np.concatenate([out, np.zeros((out.shape[0], full.shape[1] - covered), np.int64)],
                                 axis=1)
        ctx.tensors[op.out] = out

    def _attention(self, step, ctx):
        scores, s_rq, softmax, context, c_rq = step.ops
        params = self.model.params
        qkv = ctx.tensors[scores.inp]
        v_all = ctx.tensors[context.v]
        d = scores.head_dim
        sp = {n: np.asarray(params[f"{s_rq.params}.{n}"]) for n in
              ("bias", "multiplier", "shift", "zero_point")}
        cp = {n: np.asarray(params[f"{c_rq.params}.{n}"]) for n in
              ("bias", "multiplier", "shift", "zero_point")}
        if any(v.ndim != 1 for v in cp.values()):
            raise NotImplementedError("context requantization by row class is not mapped")
        tables = np.asarray(params[f"{softmax.params}.table"])
        out = np.empty((qkv.shape[0], scores.heads * d), dtype=np.int64)
        heads, places = [], []
        for h in range(scores.heads):           # head-major: each softmax table loads once
            cols = slice(h * d, (h + 1) * d)
            for start, length in zip(ctx.starts, ctx.lengths):
                rows = slice(start, start + length)
                heads.append(AttentionHead(
                    q=qkv[rows, scores.q_start + h * d: scores.q_start + (h + 1) * d],
                    k=qkv[rows, scores.k_start + h * d: scores.k_start + (h + 1) * d],
                    v=v_all[rows, context.v_start + h * d: context.v_start + (h + 1) * d],
                    score_params={n: int(x[h]) for n, x in sp.items()},
                    softmax_table=tables[h], out_params={n: x[cols] for n, x in cp.items()}))
                places.append((rows, cols))
        for (rows, cols), o in zip(places, self.accelerator.attention_heads(heads)):
            out[rows, cols] = o
        self._account(ctx, sum(2 * n * n * d for n in ctx.lengths) * scores.heads)
        ctx.tensors[c_rq.out] = out


def _dead_after(name, later):
    """No op of ``later`` reads tensor ``name`` before one rewrites it."""
    for op in later:
        if _reads(op, name):
            return False
        if _writes(op, name):
            break
    return True


def _fp8_attention_chain(ops, i):
    """The ops of one FP8 attention block from ``ops[i]`` (an AttnScores): ToInt per head,
    Softmax, the Activations of P, AttnContext, ToE4M3."""
    j = i + 1
    while j < len(ops) and not isinstance(ops[j], mq.AttnContext):
        j += 1
    chain = ops[i:j + 2]
    kinds = [type(o) for o in chain]
    if (len(chain) < 5 or kinds[1:3] != [mq.ToInt, mq.Softmax] or not chain[1].per_head
            or chain[1].bits != 8 or any(k is not mq.Activation for k in kinds[3:-2])
            or kinds[-2:] != [mq.AttnContext, mq.ToE4M3]):
        raise NotImplementedError(f"FP8 attention ops in an unsupported order at {ops[i]}")
    return chain


def _reads(op, name):
    """Whether ``op`` reads tensor ``name`` (a string field, or a MatMul pass)."""
    if isinstance(op, _Attention):
        return any(_reads(o, name) for o in op.ops)
    for f in getattr(op, "__dataclass_fields__", {}):
        if f == "out":
            continue
        value = getattr(op, f)
        if value == name:
            return True
        if f == "passes" and any(entry[0] == name for entry in value):
            return True
    return False


def _writes(op, name):
    """Whether ``op`` (over)writes tensor ``name``."""
    if isinstance(op, _Attention):
        return any(_writes(o, name) for o in op.ops)
    return getattr(op, "out", None) == name


class _Linear:
    """A MatMul and the Requantize (by row class) of its output, run as one ``linear``."""

    def __init__(self, matmul, requantize):
        self.matmul, self.requantize = matmul, requantize
        self.layer = matmul.layer

    def __repr__(self):
        return f"Linear({self.matmul.out} -> {self.requantize.out}, layer {self.layer})"


class _Convert:
    """An FP8 MatMul and the ToE4M3 / ToInt of its output, run as one ``matmul(to=...)``."""

    def __init__(self, matmul, convert):
        self.matmul, self.convert = matmul, convert
        self.layer = matmul.layer

    def __repr__(self):
        return f"Convert({self.matmul.out} -> {self.convert.out}, layer {self.layer})"


class _Attention:
    """The five ops of one attention block, run together (one program: every sequence and head)."""

    def __init__(self, *ops):
        self.ops = ops
        self.layer = ops[0].layer

    def __repr__(self):
        return f"{type(self).__name__.lstrip('_')}(layer {self.layer})"


class _AttentionFP8(_Attention):
    """The ops of one FP8 attention block (scores to context), run together."""


@dataclass
class _Context:
    seqs: list
    lengths: list
    starts: np.ndarray
    classes: np.ndarray
    stats: BatchStats
    tensors: dict = field(default_factory=dict)
