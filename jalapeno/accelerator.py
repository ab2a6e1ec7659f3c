"""The host runtime: an :class:`Accelerator` runs ops and programs on a core through a transport."""

from dataclasses import dataclass

import numpy as np

from rtl.core.status import COUNTER_BASE, Counter, ErrorCode, Register
from rtl.isa import PARAM_WORDS, PARAM_WORDS_WIDE, Bank, ConvertTarget, Opcode, PostOp, TableTarget
from rtl.matmul.mode import MatmulMode

from .program import Program
from .transport import RunOutcome


__all__ = ["Accelerator", "AttentionHead", "DeviceError", "RunStats"]

_UNITS = {0: "the dispatcher", 1: "the load unit", 2: "the compute unit", 3: "the store unit"}
_EXPLANATIONS = {
    ErrorCode.UNKNOWN_OPCODE: "an instruction has an opcode the core does not implement",
    ErrorCode.ADDRESS: "an instruction addresses words outside an on-chip buffer or external memory",
    ErrorCode.BAD_FIELD: "an instruction field is out of range (a zero or too large size, a mode "
                         "this core was not built with, a bad bank or post op, or a shift out of range)",
    ErrorCode.TOKEN_OVERFLOW: "a dependency-token counter overflowed",
    ErrorCode.ENGINE: "the matmul engine flagged a result",
}


class DeviceError(RuntimeError):
    """The core reported an error, or a program could not finish."""

    def __init__(self, message, code=None, unit=None):
        super().__init__(message)
        self.code = code
        self.unit = unit


class RunStats(dict):
    """Counter deltas of one run (``Counter`` names, lower case), plus derived figures."""


@dataclass
class AttentionHead:
    """One attention head's operands for :meth:`Accelerator.attention_heads`: INT8 ``q``,
    ``k``, ``v`` (T x d), per-tensor score requantization ``score_params``, the 256-entry
    ``softmax_table``, per-tensor or per-column ``out_params``, the valid ``length``
    (default T) and ``causal`` masking."""
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    score_params: dict
    softmax_table: np.ndarray
    out_params: dict
    length: int = None
    causal: bool = False


class Accelerator:
    """Ops on the accelerator core behind ``transport``.

    The op methods take codes (NumPy integer arrays of 8-bit codes, and the
    per-channel parameters of requantization), tile the work onto the array,
    emit one program, run it, and return the result; :attr:`last_stats` holds the
    hardware counters of the last run.
    """

    MAX_CYCLES = 1 << 40
    #: Words per chunk of a row-wise op (LayerNorm, activation, requantize): small enough
    #: that a chunk's load, the previous chunk's op and the one before's store overlap,
    #: large enough that the per-instruction and memory-latency costs stay small.
    ROWWISE_CHUNK_WORDS = 512
    #: Weight (and parameter) words per GEMM block: the first block's load is not hidden
    #: behind computation, so blocks stay small (one tile at least). 57 x 384 x 384 on the
    #: 16 x 16 core: 47,389 cycles with half of WGT per block, 41,532 with 2,048 words.
    GEMM_BLOCK_WORDS = 2048

    def __init__(self, transport, *, stats=True):
        self.transport = transport
        self.stats = stats
        read = transport.read_register
        self.lanes = read(Register.LANES)
        config = read(Register.CONFIG)
        self.fp8 = bool(config & 1)
        self.vector_units = bool(config & 2)     # softmax, LayerNorm, activation, TABLE
        self.requantizer = bool(config & 4)
        self.scheduler = bool(config & 8)
        self.inp_words = read(Register.INP_WORDS)
        self.wgt_words = read(Register.WGT_WORDS)
        self.out_words = read(Register.OUT_WORDS)
        self.max_rows = read(Register.MAX_ROWS)
        self.max_length = read(Register.MAX_LENGTH)
        self.max_hidden = read(Register.MAX_HIDDEN)
        self.last_stats = None
        if transport.word_bytes != self.lanes:
            raise DeviceError(f"the transport moves {transport.word_bytes}-byte words but the "
                              f"core has {self.lanes} lanes")

    # -- Programs -------------------------------------------------------------------------

    def counters(self):
        return {c: self.transport.read_register(COUNTER_BASE + c) for c in Counter}

    def run(self, program, *, useful_macs=None):
        """Run ``program`` to completion; raise :class:`DeviceError` if the core fails.

        With ``stats`` (the default) the counters are read before and after (on a slow
        link, ``Accelerator(transport, stats=False)`` skips that)."""
        if not self.stats:
            self.transport.push_instructions(program.to_bytes())
            result = self.transport.run(self.MAX_CYCLES)
            self.last_stats = None
            self.check_outcome(result)
            return None
        before = self.counters()
        self.transport.push_instructions(program.to_bytes())
        result = self.transport.run(self.MAX_CYCLES)
        after = self.counters()
        stats = RunStats({c.name.lower(): (after[c] - before[c]) & 0xFFFFFFFF for c in Counter})
        stats["lanes"] = self.lanes
        if useful_macs is not None:
            stats["useful_macs"] = int(useful_macs)
            cycles = max(stats["cycles"], 1)
            stats["mac_utilization"] = useful_macs / (cycles * self.lanes * self.lanes)
        stats["array_busy"] = stats["mac_cycles"] / max(stats["cycles"], 1)
        self.last_stats = stats
        self.check_outcome(result)
        return stats

    def check_outcome(self, result, allow_timeout=False):
        """Raise :class:`DeviceError` (after a soft reset) unless ``result`` is a success
        (or, with ``allow_timeout``, the cycle budget ran out)."""
        if result.outcome == RunOutcome.ERROR:
            status = self.transport.read_register(Register.STATUS)
            unit = self.transport.read_register(Register.ERROR_UNIT)
            code = ErrorCode((status >> 4) & 0xF)
            self.transport.soft_reset()
            raise DeviceError(f"device error {code.name} in {_UNITS.get(unit, unit)}: "
                              f"{_EXPLANATIONS.get(code, 'unknown error')}", code, unit)
        if result.outcome == RunOutcome.BLOCKED:
            self.transport.soft_reset()
            raise DeviceError("the program deadlocked: units wait for dependency tokens that "
                              "no instruction will push")
        if result.outcome == RunOutcome.TIMEOUT and not allow_timeout:
            self.transport.soft_reset()
            raise DeviceError(f"the program did not finish within {self.MAX_CYCLES} cycles")

    # -- Memory ---------------------------------------------------------------------------

    def _write_words(self, address, array):
        data = np.ascontiguousarray(array).tobytes()
        assert len(data) % self.lanes == 0
        self.transport.write_memory(address, data)
        return len(data) // self.lanes

    def _tiles(self, n):
        return -(-n // self.lanes)

    def _padded(self, codes, rows, cols, fill):
        out = np.full((rows, cols), fill, dtype=np.uint8)
        out[:codes.shape[0], :codes.shape[1]] = codes
        return out

    # -- Ops ------------------------------------------------------------------------------

    #: ``matmul(to=...)``: the converter targets and the results' dtypes.
    CONVERT_TARGETS = {"e4m3": (ConvertTarget.E4M3, np.uint8), "int8": (ConvertTarget.INT8, np.int8),
                       "int16": (ConvertTarget.INT16, np.int16)}

    def matmul(self, a_codes, w_codes, mode, *, to=None, shift=0):
        """``A @ W`` on 8-bit codes: int32 sums (integer modes) or FP32 bit patterns (uint32).

        Bit-exact with :func:`sim.golden.matmul.matmul`. FP8 modes with ``to`` ("e4m3",
        "int8" or "int16"): each FP32 sum times ``2**shift`` (one value, or one per column,
        in -64..64) converted on the core (the GEMM's CONVERT post op): E4M3 codes (uint8),
        or int8 / int16 values, bit-exact with :func:`sim.golden.fp_convert.fp32_to_e4m3` /
        :func:`~sim.golden.fp_convert.fp32_to_int`.
        """
        mode = MatmulMode(mode)
        if to is not None:
            if to not in self.CONVERT_TARGETS:
                raise ValueError(f"to must be one of {sorted(self.CONVERT_TARGETS)} or None, "
                                 f"not {to!r}")
            if mode.value < MatmulMode.E4M3.value:
                raise ValueError(f"to={to!r} converts FP32 sums: use an FP8 mode, not {mode.name}")
            self._require("matmul(to=...)", requant=True)
        a, w = self._check_operands(a_codes, w_codes, mode)
        m, k = a.shape
        n = w.shape[1]
        if to is not None:
            target, dtype = self.CONVERT_TARGETS[to]
            params = self._params(n, 0, 0, shift, 0, shift_range=(-64, 64))
            if m == 0 or n == 0:
                return np.zeros((m, n), dtype=dtype)
            if k == 0:
                raise ValueError("matmul(to=...) needs K >= 1")
            result = self._gemm(a, w, mode, PostOp.CONVERT, params, target=target,
                                wide=target == ConvertTarget.INT16)
            return result.view(dtype if dtype != np.int16 else "<i2")[:m, :n].astype(dtype)
        if k == 0 or m == 0 or n == 0:
            from sim.golden.matmul import matmul as golden
            return golden(a, w, mode)
        result = self._gemm(a, w, mode, PostOp.RAW, None)
        dtype = np.uint32 if mode.value >= MatmulMode.E4M3.value else np.int32
        return result.view(dtype)[:m, :n]

    def linear(self, x_codes, w_codes, *, bias, multiplier, shift, zero_point=0,
               mode=MatmulMode.INT8, activation_table=None, out_bits=8, residual=None,
               residual_multiplier=None, cls_rows=0, cls_bias=None, cls_multiplier=None,
               cls_shift=None, cls_zero_point=None):
        """``requantize(X @ W + bias)`` to INT8 per output channel (TFLite single rounding),
        optionally through a 256-entry activation table; bit-exact with
        :func:`sim.golden.requantizer.requantize` (and :func:`sim.golden.activation.apply`).

        ``out_bits=16`` gives INT16 results (:func:`sim.golden.int16_ops.requantize_int16`,
        16-bit ``zero_point``); ``residual`` (M x N INT8 codes) with ``residual_multiplier``
        (``d``, N values in 0..65535) adds ``residual * d`` to the sums before the bias
        (:func:`sim.golden.int16_ops.requantize_residual_int16`): the GEMMs' ``wide`` and
        ``residual`` fields, so the INT32 sums never leave the core.

        Row classes: rows ``[0, cls_rows)`` are requantized with the ``cls_*`` parameters
        instead (``cls_bias``, ``cls_multiplier`` and ``cls_shift`` required when
        ``cls_rows`` > 0; ``cls_zero_point`` defaults to 0); the GEMMs' ``cls_rows`` field."""
        self._require("linear()", requant=True, vector=activation_table is not None)
        mode = MatmulMode(mode)
        if mode.value >= MatmulMode.E4M3.value:
            raise ValueError("linear() requantizes INT32 sums: use an integer mode (INT8, UINT8)")
        x, w = self._check_operands(x_codes, w_codes, mode)
        n = w.shape[1]
        wide, side, d = self._residual_options(x.shape[0], n, out_bits, activation_table,
                                               residual, residual_multiplier)
        extended = wide or side is not None
        params = self._params(n, bias, multiplier, shift, zero_point, zero_point_bits=out_bits,
                              residual_multiplier=d, extended=extended)
        cls_rows, cls_params = self._class_params(
            n, cls_rows, x.shape[0], cls_bias, cls_multiplier, cls_shift, cls_zero_point,
            zero_point_bits=out_bits, residual_multiplier=d, extended=extended)
        table = None
        if activation_table is not None:
            table = np.asarray(activation_table)
            if table.shape != (256,) or table.min() < -128 or table.max() > 127:
                raise ValueError("activation_table must hold 256 int8 values")
            table = self._table_words(TableTarget.ACTIVATION, table)
        if x.shape[0] == 0 or n == 0:
            return np.zeros((x.shape[0], n), dtype=np.int16 if wide else np.int8)
        if x.shape[1] == 0:
            raise ValueError("linear() needs K >= 1")
        post = PostOp.REQUANT_ACT if table is not None else PostOp.REQUANT
        result = self._gemm(x, w, mode, post, params, table, cls_rows=cls_rows,
                            cls_params=cls_params, wide=wide, side=side)
        if wide:
            return result.view("<i2")[:x.shape[0], :n].astype(np.int16)
        return result.view(np.int8)[:x.shape[0], :n]

    def _residual_options(self, m, n, out_bits, activation_table, residual, residual_multiplier):
        """``out_bits`` and the residual checked: (wide, residual codes padded to whole tiles
        (uint8, M x tiles * lanes) or None, d or None)."""
        if out_bits not in (8, 16):
            raise ValueError(f"out_bits must be 8 or 16, not {out_bits!r}")
        wide = out_bits == 16
        if wide and activation_table is not None:
            raise ValueError("an activation table takes INT8 values: use out_bits=8 with it")
        if (residual is None) != (residual_multiplier is None):
            raise ValueError("residual and residual_multiplier must be given together")
        if residual is None:
            return wide, None, None
        res = self._int8_matrix(residual, "residual")
        if res.shape != (m, n):
            raise ValueError(f"residual must have the result's shape {(m, n)}, not {res.shape}")
        d = self._channel(n, "residual_multiplier", residual_multiplier, 0, 0xFFFF)
        side = self._padded(res.view(np.uint8), m, self._tiles(n) * self.lanes, 0)
        return wide, side, d

    def softmax(self, scores, table, *, lengths=None, causal=False, row_start=0, offset=0):
        """Row softmax of INT8 ``scores`` (M x T) to UINT8 probabilities (scale 1/256).

        ``table`` is the 256-entry exponential table (:func:`sim.golden.softmax.exp_table`);
        ``lengths`` the valid elements of each row (default T: no padding); in ``causal``
        mode element j of row r is masked iff j > row_start + r + offset. Bit-exact with
        :func:`sim.golden.softmax.softmax`.
        """
        self._require("softmax()", vector=True)
        x = self._int8_matrix(scores, "scores")
        m, t = x.shape
        words = self._tiles(t)
        if words * self.lanes > self.max_length:
            raise ValueError(f"rows of {t} scores exceed the softmax unit's {self.max_length}")
        lengths = np.broadcast_to(np.asarray(t if lengths is None else lengths, dtype=np.int64), (m,))
        if m and (lengths.min() < 0 or lengths.max() > t):
            raise ValueError(f"lengths must lie in 0..{t}")
        table = np.asarray(table, dtype=np.int64)
        if table.shape != (256,) or table.min() < 0 or table.max() > 0xFFFF:
            raise ValueError("the softmax table must hold 256 values in 0..65535")
        if not -(1 << 15) <= offset < (1 << 15) or not 0 <= row_start + m < (1 << 16):
            raise ValueError("offset and row indices must fit 16 bits")
        if m == 0 or t == 0:
            return np.zeros((m, t), dtype=np.uint8)

        def op(program, deps, rows, row0, src, dst):
            # One instruction per run of rows with the same valid length.
            last = None
            r = 0
            while r < rows:
                length = int(lengths[row0 + r])
                end = r + 1
                while end < rows and lengths[row0 + end] == length:
                    end += 1
                last = program.add(Opcode.SOFTMAX, deps, dst_bank=Bank.OUT, rows=end - r,
                                   words=words, src_base=src + r * words, src_stride=words,
                                   dst_base=dst + r * words, dst_stride=words, length=length,
                                   causal=int(bool(causal)), row_start=row_start + row0 + r,
                                   offset=int(offset))
                deps = []
                r = end
            return last
        out = self._rowwise(self._padded(x.view(np.uint8), m, words * self.lanes, 0), words,
                            op, table=(TableTarget.SOFTMAX, table))
        return out[:, :t]

    def layernorm(self, x, gamma_q, beta_q, gamma_frac, eps_q, *, rms=False, in_bits=8,
                  cls_rows=0, cls_gamma=None, cls_beta=None, cls_gamma_frac=None, cls_eps=None):
        """LayerNorm (or RMSNorm) of INT8 rows ``x`` (M x N, N a multiple of the lanes) with
        the integer parameters of :func:`sim.golden.layernorm.quantize_params` and
        :func:`~sim.golden.layernorm.quantize_eps`; bit-exact with
        :func:`sim.golden.layernorm.layernorm`. With ``in_bits=16`` the rows are INT16
        (-32768..32767; sent as 16-bit rows, the ``wide`` flag), bit-exact with
        :func:`sim.golden.int16_ops.layernorm_int16`; the result is INT8 either way.

        Row classes: rows ``[0, cls_rows)`` use ``cls_gamma``, ``cls_beta`` (and
        ``cls_gamma_frac``, ``cls_eps``, defaulting to the others), in the same program: both
        parameter tables load, a TABLE switches to the class-0 one at the first class-0 row."""
        self._require("layernorm()", vector=True)
        from rtl.layernorm import BETA_BITS, EPS_BITS, GAMMA_BITS, GAMMA_FRAC_MAX
        if in_bits not in (8, 16):
            raise ValueError(f"in_bits must be 8 or 16, not {in_bits!r}")
        wide = in_bits == 16
        if wide:
            x = np.asarray(x)
            if x.ndim != 2:
                raise ValueError(f"x must be a 2-D array, not shape {x.shape}")
            if x.size and (x.dtype.kind not in "iu" or x.min() < -(1 << 15) or x.max() >= 1 << 15):
                raise ValueError("x must hold INT16 values (-32768..32767) with in_bits=16")
            x = x.astype("<i2")
        else:
            x = self._int8_matrix(x, "x")
        m, n = x.shape
        if n == 0 or n % self.lanes or n > self.max_hidden:
            raise ValueError(f"LayerNorm rows must have a multiple of {self.lanes} elements, "
                             f"at most {self.max_hidden}; got {n}")
        gamma_q = np.asarray(gamma_q, dtype=np.int64)
        beta_q = np.asarray(beta_q, dtype=np.int64)
        if gamma_q.shape != (n,) or beta_q.shape != (n,):
            raise ValueError(f"gamma and beta must have {n} values")
        if np.abs(gamma_q).max() >= 1 << (GAMMA_BITS - 1) or np.abs(beta_q).max() >= 1 << (BETA_BITS - 1):
            raise ValueError("gamma or beta does not fit its field")
        if not 0 <= gamma_frac <= GAMMA_FRAC_MAX or not 0 <= eps_q < 1 << EPS_BITS:
            raise ValueError("gamma_frac or eps out of range")
        cls_rows = self._class_rows(cls_rows, m)
        cls_table = None
        fields = {0: (int(gamma_frac), int(eps_q)), 1: (int(gamma_frac), int(eps_q))}
        if cls_rows:
            if cls_gamma is None or cls_beta is None:
                raise ValueError(f"cls_rows = {cls_rows} needs cls_gamma and cls_beta")
            cls_gamma = np.asarray(cls_gamma, dtype=np.int64)
            cls_beta = np.asarray(cls_beta, dtype=np.int64)
            if cls_gamma.shape != (n,) or cls_beta.shape != (n,):
                raise ValueError(f"cls_gamma and cls_beta must have {n} values")
            if (np.abs(cls_gamma).max() >= 1 << (GAMMA_BITS - 1)
                    or np.abs(cls_beta).max() >= 1 << (BETA_BITS - 1)):
                raise ValueError("cls_gamma or cls_beta does not fit its field")
            g1 = int(gamma_frac if cls_gamma_frac is None else cls_gamma_frac)
            e1 = int(eps_q if cls_eps is None else cls_eps)
            if not 0 <= g1 <= GAMMA_FRAC_MAX or not 0 <= e1 < 1 << EPS_BITS:
                raise ValueError("cls_gamma_frac or cls_eps out of range")
            fields[1] = (g1, e1)
            cls_table = np.empty(2 * n, dtype=np.int64)
            cls_table[0::2], cls_table[1::2] = cls_gamma, cls_beta
        if m == 0:
            return np.zeros((0, n), dtype=np.int8)
        words = n // self.lanes
        params = np.empty(2 * n, dtype=np.int64)
        params[0::2], params[1::2] = gamma_q, beta_q

        in_words = 2 * words if wide else words

        def op(program, deps, rows, row0, src, dst, cls=0):
            g, e = fields[cls]
            return program.add(Opcode.LAYERNORM, deps, dst_bank=Bank.OUT, rows=rows, words=words,
                               src_base=src, src_stride=in_words, dst_base=dst, dst_stride=words,
                               rms=int(bool(rms)), eps=e, gamma_frac=g, wide=int(wide))
        out = self._rowwise(x.view(np.uint8), words, op, table=(TableTarget.LAYERNORM, params),
                            cls_rows=cls_rows, cls_table=cls_table)
        return out.view(np.int8)

    def activation(self, x, table):
        """Every INT8 code of ``x`` (M x N) through the 256-entry ``table`` (int8 values)."""
        self._require("activation()", vector=True)
        x = self._int8_matrix(x, "x")
        m, n = x.shape
        table = np.asarray(table, dtype=np.int64)
        if table.shape != (256,) or table.min() < -128 or table.max() > 127:
            raise ValueError("the activation table must hold 256 int8 values")
        if m == 0 or n == 0:
            return np.zeros((m, n), dtype=np.int8)
        words = self._tiles(n)

        def op(program, deps, rows, row0, src, dst):
            return program.add(Opcode.ACTIVATION, deps, dst_bank=Bank.OUT, rows=rows, words=words,
                               src_base=src, src_stride=words, dst_base=dst, dst_stride=words)
        out = self._rowwise(self._padded(x.view(np.uint8), m, words * self.lanes, 0), words, op,
                            table=(TableTarget.ACTIVATION, table))
        return out.view(np.int8)[:, :n]

    def activation_blocks(self, x, blocks):
        """Several activation tables over blocks of ``x`` (M x N INT8) in one program.

        ``blocks`` is a sequence of ``(row_start, row_stop, col_start, col_stop, table)``:
        the codes of ``x[row_start:row_stop, col_start:col_stop]`` go through ``table``
        (256 int8 values). The blocks must not overlap and must cover ``x`` (no element is
        left unmapped); their columns may start and end anywhere. Each block runs over the
        whole words its columns touch and writes its own OUT region (a word shared by two
        blocks goes through both tables), so every element comes from the table of its
        block. ``x`` loads once, word range by word range just before the first block that
        needs it; each block's table loads into one of two WGT slots while the previous
        block computes, and each block's output stores while the next computes. Bit-exact
        with :meth:`activation` on each block.
        """
        self._require("activation_blocks()", vector=True)
        lanes = self.lanes
        x = self._int8_matrix(x, "x")
        m, n = x.shape
        words = self._tiles(n)
        covered = np.zeros((m, n), dtype=np.int64)
        checked = []
        for block in blocks:
            r0, r1, c0, c1, table = block
            r0, r1, c0, c1 = (int(v) for v in (r0, r1, c0, c1))
            if not (0 <= r0 <= r1 <= m and 0 <= c0 <= c1 <= n):
                raise ValueError(f"block rows {r0}:{r1}, columns {c0}:{c1} lie outside x "
                                 f"({m} x {n})")
            table = np.asarray(table, dtype=np.int64)
            if table.shape != (256,) or table.min() < -128 or table.max() > 127:
                raise ValueError("each activation table must hold 256 int8 values")
            covered[r0:r1, c0:c1] += 1
            if r1 > r0 and c1 > c0:
                checked.append((r0, r1, c0, c1, table))
        if covered.size and (covered.min() < 1 or covered.max() > 1):
            raise ValueError("the blocks must cover x exactly once (no overlap, no gap)")
        if m == 0 or n == 0:
            return np.zeros((m, n), dtype=np.int8)
        table_words = len(self._table_words(TableTarget.ACTIVATION, checked[0][4])) // lanes
        spans = [(c0 // lanes, self._tiles(c1) - c0 // lanes) for _, _, c0, c1, _ in checked]
        out_needed = sum((r1 - r0) * nw for (r0, r1, *_), (_, nw) in zip(checked, spans))
        if (m * words > self.inp_words or out_needed > self.out_words
                or 2 * table_words > self.wgt_words):
            raise ValueError(f"x ({m} x {n}) and its blocks do not fit the on-chip buffers; "
                             "split the rows")
        # External memory: x, each block's table, each block's output region.
        address = 0
        x_base = address
        address += self._write_words(x_base, self._padded(x.view(np.uint8), m, words * lanes, 0))
        table_at = []
        for *_, table in checked:
            table_at.append(address)
            address += self._write_words(address, self._table_words(TableTarget.ACTIVATION, table))
        y_base = address
        program = Program()
        loaded = np.zeros(words, dtype=bool)
        loads = []                      # (first word, stop word, instruction): all rows
        last_table = [None, None]
        out_at = 0
        regions = []
        for b, ((r0, r1, *_), (w0, nw), t_base) in enumerate(zip(checked, spans, table_at)):
            # The words of this block no earlier block loaded, in runs, just before its
            # table (the load unit runs in order: x loaded all at once would delay the
            # tables behind it).
            w = w0
            while w < w0 + nw:
                if loaded[w]:
                    w += 1
                    continue
                stop = w
                while stop < w0 + nw and not loaded[stop]:
                    stop += 1
                loaded[w:stop] = True
                loads.append((w, stop, program.load(
                    bank=Bank.INP, sram_base=w, sram_stride=words, rows=m, cols=stop - w,
                    dram_base=x_base + w, dram_stride=words)))
                w = stop
            slot = b % 2
            t_load = program.load(deps=[last_table[slot]], bank=Bank.WGT,
                                  sram_base=slot * table_words, sram_stride=0, rows=1,
                                  cols=table_words, dram_base=t_base, dram_stride=0)
            last_table[slot] = program.table(deps=[t_load], target=TableTarget.ACTIVATION,
                                             base=slot * table_words, count=256)
            deps = [ins for u, v, ins in loads if u < w0 + nw and v > w0]
            rows = r1 - r0
            act = program.add(Opcode.ACTIVATION, deps, dst_bank=Bank.OUT, rows=rows, words=nw,
                              src_base=r0 * words + w0, src_stride=words, dst_base=out_at,
                              dst_stride=nw)
            program.store(deps=[act], bank=Bank.OUT, sram_base=out_at, sram_stride=nw, rows=rows,
                          cols=nw, dram_base=y_base + out_at, dram_stride=nw)
            regions.append(out_at)
            out_at += rows * nw
        self.run(program)
        data = np.frombuffer(self.transport.read_memory(y_base, out_at), dtype=np.int8)
        out = np.empty((m, n), dtype=np.int8)
        for (r0, r1, c0, c1, _), (w0, nw), at in zip(checked, spans, regions):
            region = data[at * lanes:(at + (r1 - r0) * nw) * lanes].reshape(r1 - r0, nw * lanes)
            out[r0:r1, c0:c1] = region[:, c0 - w0 * lanes:c1 - w0 * lanes]
        return out

    def requantize(self, accumulators, *, bias, multiplier, shift, zero_point=0,
                   activation_table=None, out_bits=8, residual=None, residual_multiplier=None,
                   cls_rows=0, cls_bias=None, cls_multiplier=None, cls_shift=None,
                   cls_zero_point=None):
        """INT32 ``accumulators`` (M x N) requantized per column, like :meth:`linear` after its
        product (and through ``activation_table`` if given, INT8 only).

        Row classes, as in :meth:`linear`: rows ``[0, cls_rows)`` use the ``cls_*``
        parameters (one program; the REQUANT instructions of those rows point at the second
        parameter set).

        ``out_bits`` 8 gives int8 results (:func:`sim.golden.requantizer.requantize`), 16 gives
        int16 results (:func:`sim.golden.int16_ops.requantize_int16`; ``zero_point`` then
        16-bit). With ``residual`` (M x N INT8 codes) and ``residual_multiplier`` (``d``, N
        values in 0..65535) ``residual * d`` is added to the accumulators first
        (:func:`sim.golden.int16_ops.requantize_residual_int16`); the sum must fit INT32.
        """
        self._require("requantize()", requant=True, vector=activation_table is not None)
        acc = np.asarray(accumulators)
        if acc.ndim != 2 or (acc.size and acc.dtype.kind not in "iu"):
            raise ValueError("accumulators must be a 2-D integer array")
        if acc.size and (acc.min() < -(1 << 31) or acc.max() >= 1 << 31):
            raise ValueError("accumulators must fit INT32")
        m, n = acc.shape
        wide, side, d = self._residual_options(m, n, out_bits, activation_table, residual,
                                               residual_multiplier)
        if d is not None:
            total = acc.astype(np.int64) + side[:, :n].view(np.int8).astype(np.int64) * d[None, :]
            if total.size and (total.min() < -(1 << 31) or total.max() >= 1 << 31):
                raise ValueError("accumulators + residual * residual_multiplier must fit INT32")
        extended = wide or d is not None
        params = self._params(n, bias, multiplier, shift, zero_point, zero_point_bits=out_bits,
                              residual_multiplier=d, extended=extended)
        cls_rows, cls_params = self._class_params(
            n, cls_rows, m, cls_bias, cls_multiplier, cls_shift, cls_zero_point,
            zero_point_bits=out_bits, residual_multiplier=d, extended=extended)
        if m == 0 or n == 0:
            return np.zeros((m, n), dtype=np.int16 if wide else np.int8)
        tiles = self._tiles(n)
        table = None
        if activation_table is not None:
            table = np.asarray(activation_table, dtype=np.int64)
            if table.shape != (256,) or table.min() < -128 or table.max() > 127:
                raise ValueError("activation_table must hold 256 int8 values")
        words_in = np.zeros((m, tiles * self.lanes), dtype="<i4")
        words_in[:, :n] = acc
        out_words = 2 * tiles if wide else tiles

        def op(program, deps, rows, row0, src, dst, param_base, res_base=0, cls=None):
            return program.add(Opcode.REQUANT, deps, dst_bank=Bank.OUT, rows=rows, words=out_words,
                               src_base=src, src_stride=4 * tiles, dst_base=dst,
                               dst_stride=out_words, param_base=param_base,
                               activate=int(table is not None), wide=int(wide),
                               residual=int(side is not None), res_base=res_base,
                               res_stride=tiles if side is not None else 0)
        out = self._rowwise(words_in.view(np.uint8), out_words, op, params=params,
                            table=None if table is None else (TableTarget.ACTIVATION, table),
                            side=side, cls_rows=cls_rows, cls_params=cls_params)
        if wide:
            return out.view("<i2")[:, :n].astype(np.int16)
        return out.view(np.int8)[:, :n]

    def attention_head(self, q, k, v, *, score_params, softmax_table, out_params,
                       length=None, causal=False):
        """One attention head in one program, every intermediate on chip:

        ``S = requantize(Q K^T)`` (INT8 scores), ``P = softmax(S)`` (UINT8, masked by
        ``length`` valid keys and ``causal``), ``O = requantize(P V)`` (UINT8 x INT8 -> INT8).
        ``q``, ``k``, ``v`` are INT8 (T x d); ``score_params`` and ``out_params`` are dicts
        of per-tensor (or per-column) ``bias``, ``multiplier``, ``shift``, ``zero_point``.
        K^T is never formed: the GEMM reads K through the weight transposer.
        """
        head = AttentionHead(q, k, v, score_params=score_params, softmax_table=softmax_table,
                             out_params=out_params, length=length, causal=causal)
        return self.attention_heads([head])[0]

    def attention_heads(self, heads):
        """Many attention heads (:class:`AttentionHead`, each as in :meth:`attention_head`)
        in one program; returns their outputs in order.

        Head i's Q, S and P live in INP half i % 2, its K, V and parameters in WGT half
        i % 2 and O in OUT half i % 2, so head i + 1's operands load and head i - 1's
        output stores while head i computes. Consecutive heads with equal softmax tables
        share one TABLE (two table slots in WGT, so the next table loads early): order the
        heads by table to load each table once.
        """
        self._require("attention_heads()", vector=True, requant=True)
        lanes = self.lanes
        heads = list(heads)
        if not heads:
            return []
        prepared = [self._prepare_head(h) for h in heads]
        table_words = len(self._table_words(TableTarget.SOFTMAX, np.zeros(256))) // lanes
        halves = 2 if len(prepared) > 1 else 1      # one head gets the whole buffers
        slots = 2 * table_words                     # table slot 0 | table slot 1 in WGT
        inp_half, out_half = self.inp_words // halves, self.out_words // halves
        wgt_half = (self.wgt_words - slots) // halves
        for p in prepared:
            if (p["inp_words"] > inp_half or p["wgt_words"] > wgt_half
                    or p["out_words"] > out_half):
                raise ValueError(f"a head of T = {p['t']}, d = {p['d']} does not fit the "
                                 f"on-chip buffers ({'half of ' if halves > 1 else ''}INP, WGT "
                                 "and OUT per head)")
        # External memory: each head's Q | K | V | score params | out params, each distinct
        # run of tables, then the outputs.
        address = 0
        tables = []                     # (dram address, first head index)
        for i, p in enumerate(prepared):
            p["dram"] = address
            address += self._write_words(address, p["operands"])
            if i == 0 or not np.array_equal(p["table"], prepared[i - 1]["table"]):
                tables.append(address)
                address += self._write_words(
                    address, self._table_words(TableTarget.SOFTMAX, p["table"]))
            p["table_run"] = len(tables) - 1
        for p in prepared:
            p["o_dram"] = address
            address += p["t"] * p["d_tiles"]
        program = Program()
        last_table = [None, None]       # the TABLE that last read table slot s
        last_reader = [None, None]      # the GEMM (P V) that last read INP / WGT half h
        last_store = [None, None]
        run = -1
        for i, p in enumerate(prepared):
            h = i % halves
            t, d_tiles, t_tiles = p["t"], p["d_tiles"], p["t_tiles"]
            if p["table_run"] != run:
                run = p["table_run"]
                slot = run % 2
                t_load = program.load(deps=[last_table[slot]], bank=Bank.WGT,
                                      sram_base=slot * table_words, sram_stride=0, rows=1,
                                      cols=table_words, dram_base=tables[run], dram_stride=0)
                last_table[slot] = program.table(deps=[t_load], target=TableTarget.SOFTMAX,
                                                 base=slot * table_words, count=256)
            inp = h * inp_half
            q_at, s_at, p_at = inp, inp + t * d_tiles, inp + t * d_tiles + t * t_tiles
            k_at = slots + h * wgt_half
            v_at = k_at + p["t_pad"] * d_tiles
            sp_at = v_at + p["t_pad"] * d_tiles
            op_at = sp_at + p["sp_words"]
            q_load = program.load(deps=[last_reader[h]], bank=Bank.INP, sram_base=q_at,
                                  sram_stride=d_tiles, rows=t, cols=d_tiles,
                                  dram_base=p["dram"], dram_stride=d_tiles)
            w_load = program.load(deps=[last_reader[h]], bank=Bank.WGT, sram_base=k_at, sram_stride=0, rows=1,
                                  cols=p["wgt_words"], dram_base=p["dram"] + t * d_tiles,
                                  dram_stride=0)
            program.gemm(deps=[q_load, w_load], mode=MatmulMode.INT8, post=PostOp.REQUANT,
                         transpose_w=1, out_bank=Bank.INP, m=t, k_tiles=d_tiles,
                         n_tiles=t_tiles, a_base=q_at, a_stride=d_tiles, w_base=k_at,
                         w_stride=d_tiles, out_base=s_at, out_stride=t_tiles, param_base=sp_at)
            program.add(Opcode.SOFTMAX, dst_bank=Bank.INP, rows=t, words=t_tiles, src_base=s_at,
                        src_stride=t_tiles, dst_base=p_at, dst_stride=t_tiles,
                        length=p["length"], causal=p["causal"], row_start=0, offset=0)
            last_reader[h] = program.gemm(
                deps=[last_store[h]], mode=MatmulMode.UINT8, post=PostOp.REQUANT, transpose_w=0,
                out_bank=Bank.OUT, m=t, k_tiles=t_tiles, n_tiles=d_tiles, a_base=p_at,
                a_stride=t_tiles, w_base=v_at, w_stride=d_tiles, out_base=h * out_half,
                out_stride=d_tiles, param_base=op_at)
            last_store[h] = program.store(deps=[last_reader[h]], bank=Bank.OUT,
                                          sram_base=h * out_half, sram_stride=d_tiles, rows=t,
                                          cols=d_tiles, dram_base=p["o_dram"],
                                          dram_stride=d_tiles)
        self.run(program, useful_macs=sum(2 * p["t"] * p["t"] * p["d"] for p in prepared))
        outputs = []
        for p in prepared:
            data = self.transport.read_memory(p["o_dram"], p["t"] * p["d_tiles"])
            outputs.append(np.frombuffer(data, dtype=np.int8)
                           .reshape(p["t"], p["d_tiles"] * lanes)[:, :p["d"]].copy())
        return outputs

    def _prepare_head(self, head):
        """A head's checked operands as external-memory words and its buffer needs."""
        lanes = self.lanes
        q, k, v = (self._int8_matrix(a, name) for a, name in
                   ((head.q, "Q"), (head.k, "K"), (head.v, "V")))
        t, d = q.shape
        if k.shape != (t, d) or v.shape != (t, d):
            raise ValueError(f"Q, K and V must all be T x d; got {q.shape}, {k.shape}, {v.shape}")
        length = t if head.length is None else int(head.length)
        if not 0 <= length <= t:
            raise ValueError(f"length must lie in 0..{t}")
        t_tiles, d_tiles = self._tiles(t), self._tiles(d)
        t_pad = t_tiles * lanes
        if t > self.max_rows or t_pad > self.max_length:
            raise ValueError(f"T = {t} exceeds the core (max_rows {self.max_rows}, "
                             f"softmax rows {self.max_length})")
        table = np.asarray(head.softmax_table, dtype=np.int64)
        if table.shape != (256,) or table.min() < 0 or table.max() > 0xFFFF:
            raise ValueError("the softmax table must hold 256 values in 0..65535")
        s_params = self._params(t_pad, **{"zero_point": 0, **head.score_params})
        o_params = self._params(d, **{"zero_point": 0, **head.out_params})
        pad = lambda a, rows: self._padded(a.view(np.uint8), rows, d_tiles * lanes, 0)
        operands = np.concatenate([a.reshape(-1) for a in (pad(q, t), pad(k, t_pad),
                                                            pad(v, t_pad), s_params, o_params)])
        sp_words, op_words = len(s_params) // lanes, len(o_params) // lanes
        return {"t": t, "d": d, "t_tiles": t_tiles, "d_tiles": d_tiles, "t_pad": t_pad,
                "length": length, "causal": int(bool(head.causal)), "table": table,
                "operands": operands, "sp_words": sp_words,
                "inp_words": t * d_tiles + 2 * t * t_tiles,
                "wgt_words": 2 * t_pad * d_tiles + sp_words + op_words,
                "out_words": t * d_tiles}

    # -- Helpers --------------------------------------------------------------------------

    @staticmethod
    def _class_rows(cls_rows, m):
        """``cls_rows`` checked against the M rows."""
        if isinstance(cls_rows, bool) or not isinstance(cls_rows, (int, np.integer)):
            raise ValueError(f"cls_rows must be an integer, not {cls_rows!r}")
        if not 0 <= cls_rows <= m:
            raise ValueError(f"cls_rows must lie in 0..{m} (the rows), not {cls_rows}")
        return int(cls_rows)

    def _class_params(self, n, cls_rows, m, bias, multiplier, shift, zero_point, **kwargs):
        """``cls_rows`` checked, and the class-1 requantization parameters (:meth:`_params`
        with ``kwargs``) when it is not 0 (None otherwise)."""
        cls_rows = self._class_rows(cls_rows, m)
        if not cls_rows:
            return 0, None
        missing = [name for name, value in (("cls_bias", bias), ("cls_multiplier", multiplier),
                                            ("cls_shift", shift)) if value is None]
        if missing:
            raise ValueError(f"cls_rows = {cls_rows} needs {', '.join(missing)}")
        return cls_rows, self._params(n, bias, multiplier, shift,
                                      0 if zero_point is None else zero_point, **kwargs)

    def _require(self, what, *, vector=False, requant=False):
        """A clear error for an op the core was built without (its CONFIG register)."""
        missing = []
        if vector and not self.vector_units:
            missing.append("the softmax, LayerNorm and activation units")
        if requant and not self.requantizer:
            missing.append("requantizers")
        if missing:
            raise ValueError(f"{what} needs {' and '.join(missing)}, which this core was built "
                             "without (e.g. an FPGA build: docs/fpga.md); use matmul() and "
                             "finish on the host")

    def _int8_matrix(self, x, name):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, not shape {x.shape}")
        if x.size and (x.dtype.kind not in "iu" or x.min() < -128 or x.max() > 127):
            raise ValueError(f"{name} must hold INT8 values (-128..127)")
        return x.astype(np.int8)

    def _table_words(self, target, entries):
        """A TABLE's entries as 32-bit little-endian words, padded to whole buffer words."""
        values = np.asarray(entries, dtype=np.int64).astype("<i4")
        per_word = self.lanes // 4
        padded = np.zeros(-(-len(values) // per_word) * per_word, dtype="<i4")
        padded[:len(values)] = values
        return padded.view(np.uint8)

    def _rowwise(self, rows_bytes, out_words, op, *, params=None, table=None, side=None,
                 cls_rows=0, cls_params=None, cls_table=None):
        """Run a row-wise op over ``rows_bytes`` (M x in_words words) in chunks: each chunk
        is loaded into one INP half, ``op`` writes it to one OUT half, a STORE takes it out;
        halves alternate so the next chunk loads while this one computes. Chunks are about
        :attr:`ROWWISE_CHUNK_WORDS` words (even when the whole input would fit), so
        loading, computing and storing overlap. ``side`` (M x
        side_words words, REQUANT's residual) goes the same way through two WGT halves after
        the table and parameters; ``op`` then gets its chunk's base as ``res_base``.

        Row classes: rows ``[0, cls_rows)`` use ``cls_params`` (loaded after ``params``)
        and ``cls_table`` (the class-0 table's entries; a TABLE instruction switches to the
        class-0 table at the first class-0 row); ``op`` is called once per class within a
        chunk and gets ``cls`` (1 or 0) when ``cls_rows`` is given."""
        lanes = self.lanes
        m = rows_bytes.shape[0]
        in_words = rows_bytes.shape[1] // lanes
        inp_half, out_half = self.inp_words // 2, self.out_words // 2
        chunk = min(m, inp_half // in_words, out_half // out_words,
                    max(1, self.ROWWISE_CHUNK_WORDS // max(in_words, out_words)))
        classes = cls_rows > 0 and (cls_params is not None or cls_table is not None)
        if side is not None:
            side_words = side.shape[1] // lanes
            fixed = (-(-len(self._table_words(*table)) // lanes) if table is not None else 0)
            fixed *= 2 if cls_table is not None else 1
            fixed += len(params) // lanes if params is not None else 0
            fixed += len(cls_params) // lanes if cls_params is not None else 0
            side_half = (self.wgt_words - fixed) // 2
            chunk = min(chunk, max(side_half, 0) // side_words)
        if chunk == 0:
            raise ValueError("rows too long for the on-chip buffers")
        address = 0
        x_base = address
        address += self._write_words(x_base, rows_bytes)
        program = Program()
        first_deps = []
        param_base = 0
        w_used = 0
        if table is not None:
            target, entries = table
            words = self._table_words(target, entries)
            if classes and cls_table is not None:      # class 1's table first, at WGT 0
                words = np.concatenate([self._table_words(target, cls_table), words])
            t_base = address
            address += self._write_words(t_base, words)
            count = len(entries)
            n_words = len(words) // lanes
            t_load = program.load(bank=Bank.WGT, sram_base=0, sram_stride=0, rows=1, cols=n_words,
                                  dram_base=t_base, dram_stride=0)
            first_deps = [program.table(deps=[t_load], target=target, base=0, count=count)]
            w_used = n_words
        cls_param_base = None
        if params is not None:
            block = params
            if classes and cls_params is not None:    # class 0's set, then class 1's
                block = np.concatenate([params, cls_params])
            p_base = address
            address += self._write_words(p_base, block)
            param_base = w_used
            if classes and cls_params is not None:
                cls_param_base = param_base + len(params) // lanes
            p_load = program.load(bank=Bank.WGT, sram_base=param_base, sram_stride=0, rows=1,
                                  cols=len(block) // lanes, dram_base=p_base, dram_stride=0)
            first_deps = first_deps + [p_load]
            w_used += len(block) // lanes
        if side is not None:
            s_base = address
            address += self._write_words(s_base, side)
        y_base = address
        last_op = [first_deps[-1] if first_deps else None] * 2
        last_store = [None, None]
        for i, r0 in enumerate(range(0, m, chunk)):
            rows = min(chunk, m - r0)
            h = i % 2
            load = program.load(deps=[last_op[h]], bank=Bank.INP, sram_base=h * inp_half,
                                sram_stride=in_words, rows=rows, cols=in_words,
                                dram_base=x_base + r0 * in_words, dram_stride=in_words)
            deps = [load, last_store[h]] + ([d for d in first_deps if d is not None] if i == 0 else [])
            extra = {}
            if side is not None:
                res_base = w_used + h * side_half
                deps.append(program.load(deps=[last_op[h]], bank=Bank.WGT, sram_base=res_base,
                                         sram_stride=side_words, rows=rows, cols=side_words,
                                         dram_base=s_base + r0 * side_words,
                                         dram_stride=side_words))
                extra["res_base"] = res_base
            if not classes:
                if params is not None:
                    last_op[h] = op(program, deps, rows, r0, h * inp_half, h * out_half,
                                    param_base, **extra)
                else:
                    last_op[h] = op(program, deps, rows, r0, h * inp_half, h * out_half)
            else:
                # this chunk's class-1 rows, then its class-0 rows
                for s, e, c in ((r0, min(r0 + rows, cls_rows), 1),
                                (max(r0, cls_rows), r0 + rows, 0)):
                    if e <= s:
                        continue
                    if c == 0 and s == cls_rows and table is not None and cls_table is not None:
                        deps = deps + [program.table(target=target, base=n_words // 2,
                                                     count=count)]
                    k = s - r0
                    sub = dict(extra)
                    if side is not None:
                        sub["res_base"] = extra["res_base"] + k * side_words
                    args = (program, deps, e - s, s, h * inp_half + k * in_words,
                            h * out_half + k * out_words)
                    if params is not None:
                        base = cls_param_base if c == 1 and cls_param_base is not None else param_base
                        last_op[h] = op(*args, base, cls=c, **sub)
                    else:
                        last_op[h] = op(*args, cls=c, **sub)
                    deps = []
            last_store[h] = program.store(deps=[last_op[h]], bank=Bank.OUT, sram_base=h * out_half,
                                          sram_stride=out_words, rows=rows, cols=out_words,
                                          dram_base=y_base + r0 * out_words, dram_stride=out_words)
        self.run(program)
        data = self.transport.read_memory(y_base, m * out_words)
        return np.frombuffer(data, dtype=np.uint8).reshape(m, out_words * lanes).copy()

    def _check_operands(self, a_codes, w_codes, mode):
        a, w = np.asarray(a_codes), np.asarray(w_codes)
        for name, x in (("A", a), ("W", w)):
            if x.ndim != 2:
                raise ValueError(f"{name} must be a 2-D array, not shape {x.shape}")
            if x.size and (x.dtype.kind not in "iu" or x.min() < 0 or x.max() > 255):
                raise ValueError(f"{name} must hold 8-bit codes (integers 0..255)")
        if a.shape[1] != w.shape[0]:
            raise ValueError(f"inner dimensions differ: A is {a.shape[0]}x{a.shape[1]}, "
                             f"W is {w.shape[0]}x{w.shape[1]}")
        if mode.value >= MatmulMode.E4M3.value and not self.fp8:
            raise ValueError(f"this core was built without the FP8 modes ({mode.name})")
        return a.astype(np.uint8), w.astype(np.uint8)

    @staticmethod
    def _channel(n, name, value, low, high):
        """A per-channel parameter broadcast to ``n`` values, checked against its field."""
        array = np.asarray(value, dtype=np.int64)
        try:
            v = np.broadcast_to(array, (n,))
        except ValueError:
            raise ValueError(f"{name} must be one value or {n} (one per column), "
                             f"not shape {array.shape}") from None
        if v.size and (v.min() < low or v.max() > high):
            raise ValueError(f"{name} must be in {low}..{high}")
        return v

    def _params(self, n, bias, multiplier, shift, zero_point, *, zero_point_bits=8,
                residual_multiplier=None, extended=False, shift_range=(-31, 30)):
        """Requantization parameters per tile: PARAM_WORDS words, or PARAM_WORDS_WIDE with
        ``extended`` (16-bit zero points and the residual multipliers, 0 if None).
        ``shift_range``: the requantizer's (default) or the converters' (-64..64)."""
        bias = self._channel(n, "bias", bias, -(1 << 31), (1 << 31) - 1)
        multiplier = self._channel(n, "multiplier", multiplier, 0, (1 << 31) - 1)
        shift = self._channel(n, "shift", shift, *shift_range)
        zp_limit = 1 << (zero_point_bits - 1)
        zero_point = self._channel(n, "zero_point", zero_point, -zp_limit, zp_limit - 1)
        d = np.zeros(n, np.int64) if residual_multiplier is None else residual_multiplier
        tiles = self._tiles(n)
        width = tiles * self.lanes
        pad = lambda v, dtype: np.concatenate([v, np.zeros(width - n, np.int64)]).astype(dtype)
        bias, multiplier, shift = pad(bias, "<i4"), pad(multiplier, "<u4"), pad(shift, np.int8)
        zero_point = pad(zero_point, "<i2" if extended else np.int8)
        d = pad(d, "<u2")
        blocks = []
        for j in range(tiles):
            cols = slice(j * self.lanes, (j + 1) * self.lanes)
            fields = [bias[cols], multiplier[cols], shift[cols], zero_point[cols]]
            if extended:
                fields.append(d[cols])
            blocks.append(b"".join(f.tobytes() for f in fields))
        words = PARAM_WORDS_WIDE if extended else PARAM_WORDS
        assert all(len(b) == words * self.lanes for b in blocks)
        return np.frombuffer(b"".join(blocks), dtype=np.uint8)

    def _plan(self, m, k_tiles, n_tiles, post, param_sets=1, *, wide=False, residual=False,
              table=False):
        """(M rows per chunk, output tiles per block, output words per row and tile,
        parameter words per tile, WGT words per block slot, slots). Each block's WGT slot
        holds its weights, its parameter sets and (``residual``) its M chunk's residual
        words; there are two slots (halves: the next block loads while one computes), or,
        when one output tile's K does not fit half of WGT, one slot of the whole buffer
        (the blocks run one after the other)."""
        lanes = self.lanes
        out_per_tile = 4 if post == PostOp.RAW else (2 if wide else 1)
        w_half = self.wgt_words // 2
        slots = 2
        extended = (wide or residual) and post != PostOp.CONVERT
        set_words = PARAM_WORDS_WIDE if extended else PARAM_WORDS
        p_words = set_words * param_sets if post != PostOp.RAW else 0
        w_per_tile = k_tiles * lanes + p_words + int(residual)
        if w_per_tile > w_half and not table:
            w_half, slots = self.wgt_words, 1
        if w_per_tile > w_half:
            raise ValueError(f"K = {k_tiles * lanes} is too large for the weight buffer "
                             f"({self.wgt_words} words): at most "
                             f"{(w_half - p_words - int(residual)) // lanes * lanes}")
        if k_tiles > self.inp_words:
            raise ValueError(f"K = {k_tiles * lanes} is too large for the input buffer")
        m_chunk = min(m, self.max_rows, self.inp_words // k_tiles,
                      (self.out_words // 2) // out_per_tile)
        if residual:    # one residual word per row and tile beside the tile's weights
            m_chunk = min(m_chunk, w_half - (k_tiles * lanes + p_words))
            w_per_tile = k_tiles * lanes + p_words + m_chunk
        n_block = min(n_tiles, w_half // w_per_tile,
                      (self.out_words // 2) // (m_chunk * out_per_tile),
                      max(1, self.GEMM_BLOCK_WORDS // w_per_tile))
        return m_chunk, n_block, out_per_tile, set_words, w_half, slots

    def _gemm(self, a, w, mode, post, params, table=None, *, cls_rows=0, cls_params=None,
              wide=False, side=None, target=None):
        """Rows ``[0, cls_rows)`` use ``cls_params`` (another :meth:`_params` block): per M
        chunk its class-1 rows go in the GEMM's ``cls_rows``, or, if all of them are class 1,
        the GEMM's ``param_base`` points at the class-1 set; both sets share the weight half.
        ``wide``: INT16 results; ``side``: the residual codes (M x tiles * lanes, uint8), each
        block's rows loaded into its WGT half after the parameters; ``target``: CONVERT's."""
        lanes = self.lanes
        if cls_params is None:
            cls_rows = 0
        m, k = a.shape
        n = w.shape[1]
        k_tiles, n_tiles = self._tiles(k), self._tiles(n)
        fp8 = mode.value >= MatmulMode.E4M3.value
        a_words = self._padded(a, m, k_tiles * lanes, 0x80 if fp8 else 0)
        w_words = self._padded(w, k_tiles * lanes, n_tiles * lanes, 0)
        m_chunk, n_block, out_per_tile, set_words, w_slot, slots = self._plan(
            m, k_tiles, n_tiles, post, param_sets=2 if cls_rows else 1, wide=wide,
            residual=side is not None, table=table is not None)

        # External memory: A, W, parameters, table, C.
        address = 0
        a_base = address
        address += self._write_words(a_base, a_words)
        w_base = address
        address += self._write_words(w_base, w_words)
        p_base = address
        if params is not None:
            address += self._write_words(p_base, params)
        cp_base = address
        if cls_rows:
            address += self._write_words(cp_base, cls_params)
        t_base = address
        if table is not None:
            address += self._write_words(t_base, table)
        s_base = address
        if side is not None:
            address += self._write_words(s_base, side)
        c_base = address
        c_stride = n_tiles * out_per_tile

        program = Program()
        o_half = self.out_words // 2
        last_gemm = None
        gemm_of_half = [None, None]
        store_of_half = [None, None]
        block_count = 0
        if table is not None:
            # The table goes through the top of WGT's second half before any weights use it.
            t_words = len(table) // lanes
            t_load = program.load(bank=Bank.WGT, sram_base=self.wgt_words - t_words,
                                  sram_stride=0, rows=1, cols=t_words,
                                  dram_base=t_base, dram_stride=0)
            last_gemm = program.table(deps=[t_load], target=TableTarget.ACTIVATION,
                                      base=self.wgt_words - t_words, count=256)
            gemm_of_half[1] = last_gemm
        for m0 in range(0, m, m_chunk):
            rows = min(m_chunk, m - m0)
            chunk_cls = max(0, min(cls_rows - m0, rows))    # this chunk's class-1 rows
            a_load = program.load(deps=[last_gemm], bank=Bank.INP, sram_base=0,
                                  sram_stride=k_tiles, rows=rows, cols=k_tiles,
                                  dram_base=a_base + m0 * k_tiles, dram_stride=k_tiles)
            for b0 in range(0, n_tiles, n_block):
                nb = min(n_block, n_tiles - b0)
                h = block_count % slots
                block_count += 1
                half = h * w_slot
                w_load = program.load(deps=[gemm_of_half[h]], bank=Bank.WGT, sram_base=half,
                                      sram_stride=nb, rows=k_tiles * lanes, cols=nb,
                                      dram_base=w_base + b0, dram_stride=n_tiles)
                param_base = half + k_tiles * lanes * nb
                cls_base = param_base + nb * set_words
                res_base = cls_base + (nb * set_words if cls_rows else 0)
                loads = [w_load]
                if params is not None and chunk_cls < rows:
                    loads.append(program.load(deps=[gemm_of_half[h]], bank=Bank.WGT,
                                              sram_base=param_base, sram_stride=0, rows=1,
                                              cols=nb * set_words,
                                              dram_base=p_base + b0 * set_words, dram_stride=0))
                if chunk_cls:
                    loads.append(program.load(deps=[gemm_of_half[h]], bank=Bank.WGT,
                                              sram_base=cls_base, sram_stride=0, rows=1,
                                              cols=nb * set_words,
                                              dram_base=cp_base + b0 * set_words, dram_stride=0))
                options = {}
                if post == PostOp.CONVERT:
                    options["target"] = target
                elif wide:
                    options["wide"] = 1
                if side is not None:
                    loads.append(program.load(deps=[gemm_of_half[h]], bank=Bank.WGT,
                                              sram_base=res_base, sram_stride=nb, rows=rows,
                                              cols=nb, dram_base=s_base + m0 * n_tiles + b0,
                                              dram_stride=n_tiles))
                    options.update(residual=1, res_base=res_base, res_stride=nb)
                classes = {}
                if chunk_cls == rows:       # all class 1: the class-1 set is the only one
                    param_base = cls_base
                elif chunk_cls:
                    classes = dict(cls_rows=chunk_cls, cls_param_base=cls_base)
                out_base = h * o_half
                last_gemm = program.gemm(
                    deps=[a_load, *loads, store_of_half[h]], mode=mode, post=post,
                    transpose_w=0, out_bank=Bank.OUT, m=rows, k_tiles=k_tiles, n_tiles=nb,
                    a_base=0, a_stride=k_tiles, w_base=half, w_stride=nb,
                    out_base=out_base, out_stride=nb * out_per_tile, param_base=param_base,
                    **classes, **options)
                gemm_of_half[h] = last_gemm
                store_of_half[h] = program.store(
                    deps=[last_gemm], bank=Bank.OUT, sram_base=out_base,
                    sram_stride=nb * out_per_tile, rows=rows, cols=nb * out_per_tile,
                    dram_base=c_base + m0 * c_stride + b0 * out_per_tile, dram_stride=c_stride)
        self.run(program, useful_macs=m * k * n)
        data = self.transport.read_memory(c_base, m * c_stride)
        if post == PostOp.RAW:
            return np.frombuffer(data, dtype="<u4").reshape(m, n_tiles * lanes).copy()
        return np.frombuffer(data, dtype=np.uint8).reshape(m, c_stride * lanes).copy()
