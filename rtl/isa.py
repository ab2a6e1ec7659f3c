"""The Jalapeño instruction set: 256-bit instructions, defined once as ``lib.data`` layouts.

The RTL decodes instructions through these layouts and the host compiler encodes
them with :func:`encode`, so the two can never disagree on a field's position.

Every instruction starts with the same 8-bit :data:`Header`: the opcode and four
dependency-token flags (see ``docs/core.md``). The core has three execution units,
load, compute and store, each with its own instruction queue; ``LOAD`` goes to the
load unit, ``STORE`` to the store unit, every other opcode to the compute unit. A
unit's "previous" neighbour is the one before it in load -> compute -> store, its
"next" neighbour the one after; ``pop_prev`` waits for (and consumes) a token from
the previous unit before the instruction starts, ``push_next`` gives the next unit
a token when the instruction has finished, and so on (the scheme of VTA).

Addresses of on-chip buffers count words of ``lanes`` bytes (one word holds one
array row); external addresses count memory-port words of the same width. All
matrices are row-major in words: element (r, c) of an operand at ``base`` with
``stride`` lies in word ``base + r * stride + c // lanes``, byte ``c % lanes``.
"""

import enum as py_enum

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data, enum

from .matmul.mode import MatmulMode
from .numerics.fp32_converter import ConvertTarget


__all__ = [
    "INSTRUCTION_BITS", "Opcode", "Bank", "PostOp", "Header", "TransferInstruction",
    "ConvertTarget", "GemmInstruction", "TableInstruction", "TableTarget", "VectorInstruction", "Instruction",
    "LAYOUTS", "encode", "decode_opcode", "PARAM_WORDS", "PARAM_WORDS_WIDE",
]


INSTRUCTION_BITS = 256

#: Words of requantization parameters per output tile of ``lanes`` columns, in this
#: order: bias (int32 x lanes: 4 words), multiplier (uint32 x lanes: 4 words),
#: shift (int8 x lanes: 1 word), zero point (int8 x lanes: 1 word).
PARAM_WORDS = 10

#: Words of requantization parameters per ``lanes`` columns of a REQUANT with ``wide`` or
#: ``residual``: bias (int32 x lanes: 4 words), multiplier (uint32 x lanes: 4 words), shift
#: (int8 x lanes: 1 word), zero point (int16 x lanes: 2 words), the residual multiplier d
#: (uint16 x lanes: 2 words); 16-bit values little-endian, element c of a 2-word field in
#: word c // (lanes / 2) (the layout of 16-bit rows). GEMM and plain REQUANT use PARAM_WORDS.
PARAM_WORDS_WIDE = 13


class Opcode(enum.Enum, shape=4):
    NOP = 0
    LOAD = 1
    STORE = 2
    GEMM = 3
    TABLE = 4
    SYNC = 5
    SOFTMAX = 6
    LAYERNORM = 7
    ACTIVATION = 8
    REQUANT = 9


class Bank(enum.Enum, shape=2):
    """On-chip buffers. ``COUNTERS`` is the read-only counter file (STORE source only)."""
    INP = 0
    WGT = 1
    OUT = 2
    COUNTERS = 3


class PostOp(enum.Enum, shape=2):
    """What happens to a GEMM's result rows before they are written."""
    RAW = 0            # INT32 / FP32 bit patterns, 4 words per row of ``lanes`` columns
    REQUANT = 1        # per-column requantization to INT8, 1 word per row
    REQUANT_ACT = 2    # requantization, then the activation table
    CONVERT = 3        # FP8 modes: FP32 x 2**shift to E4M3 / INT8 (1 word) or INT16 (2 words)


class TableTarget(enum.Enum, shape=2):
    """Which table a TABLE instruction loads."""
    ACTIVATION = 0     # 256 entries: the output code for input code i (low 8 bits)
    SOFTMAX = 1        # 256 entries: the softmax exponential table (low 16 bits)
    LAYERNORM = 2      # 2 x hidden entries: gamma_0, beta_0, gamma_1, beta_1, ... (int32)


Header = data.StructLayout({
    "opcode": Opcode,
    "pop_prev": 1,
    "pop_next": 1,
    "push_prev": 1,
    "push_next": 1,
})

#: LOAD (external memory -> ``bank``) and STORE (``bank`` -> external memory): a 2-D
#: copy of ``rows`` x ``cols`` words; row r's words are at ``sram_base + r *
#: sram_stride`` on chip and ``dram_base + r * dram_stride`` outside, one burst each.
TransferInstruction = data.StructLayout({
    "header": Header,
    "bank": Bank,
    "sram_base": 16,
    "sram_stride": 16,
    "rows": 16,
    "cols": 16,
    "dram_base": 32,
    "dram_stride": 32,
})

#: GEMM: ``OUT[m, n] = post(sum_k A[m, k] * W[k, n])`` for m < ``m``, k < ``k_tiles``
#: x lanes, n < ``n_tiles`` x lanes. A is read from INP (``a_base``, ``a_stride``), W
#: from WGT (``w_base``, ``w_stride``; with ``transpose_w`` WGT holds W transposed,
#: i.e. row n of the buffer matrix is column n of W), the result goes to
#: ``out_bank`` (``out_base``, ``out_stride``). Requantization parameters of output
#: tile j are the :data:`PARAM_WORDS` words at ``param_base + j * PARAM_WORDS`` in WGT.
#:
#: Row classes: rows r < ``cls_rows`` (e.g. the [CLS] rows of a batch of sentences) use
#: the parameter set of tile j at ``cls_param_base + j * PARAM_WORDS`` instead (the rest
#: keep ``param_base + j * PARAM_WORDS``); ``cls_rows`` = 0 means no classes. BAD_FIELD when
#: ``cls_rows`` != 0 and (``cls_rows`` >= ``m`` or ``post`` is RAW); ADDRESS when the class-1
#: parameters (``n_tiles * PARAM_WORDS`` words) leave WGT.
#:
#: The residual GEMM (the requantizer options of :data:`VectorInstruction`'s REQUANT, on the
#: engine's rows): with ``wide`` the REQUANT results are INT16, two words per output tile
#: (``out_base + r * out_stride + 2 * j`` and the next); with ``residual`` the INT8 row r of
#: tile j, read from WGT at ``res_base + r * res_stride + j``, times ``d`` is added to the
#: accumulators before the bias (:func:`sim.golden.int16_ops.requantize_residual_int16`).
#: Either takes :data:`PARAM_WORDS_WIDE` parameter words per tile (class-1 sets too). The
#: weight sequencer reads tile j's residual words after its weights, so each output tile
#: costs about ``lanes`` cycles more than without. BAD_FIELD for ``wide`` or ``residual``
#: with RAW, ``wide`` with REQUANT_ACT; ADDRESS when the residual rows leave WGT.
#:
#: CONVERT (FP8 modes, on a core built with them): each FP32 result times ``2**shift`` to
#: ``target`` (:class:`~rtl.numerics.fp32_converter.ConvertTarget`): E4M3 codes or INT8
#: values (one word per row and tile) or INT16 values (two, like ``wide``), bit-exact with
#: :mod:`sim.golden.fp_convert`; ``shift`` per column is the shift field of tile j's
#: :data:`PARAM_WORDS`-word parameter set (the other fields are ignored; row classes
#: work as for REQUANT). BAD_FIELD for CONVERT with an integer mode, on a core without the
#: FP8 modes, with ``wide`` or ``residual``, ``target`` 3, or a shift outside -64..64.
GemmInstruction = data.StructLayout({
    "header": Header,
    "mode": MatmulMode,
    "post": PostOp,
    "transpose_w": 1,
    "out_bank": Bank,
    "m": 16,
    "k_tiles": 16,
    "n_tiles": 16,
    "a_base": 16,
    "a_stride": 16,
    "w_base": 16,
    "w_stride": 16,
    "out_base": 16,
    "out_stride": 16,
    "param_base": 16,
    "cls_rows": 16,
    "cls_param_base": 16,
    "wide": 1,
    "residual": 1,
    "res_base": 16,
    "res_stride": 16,
    "target": ConvertTarget,
})

#: TABLE: load ``count`` 32-bit entries (little-endian, lanes / 4 per word) from WGT at
#: ``base`` into the ``target`` table (see :class:`TableTarget`).
TableInstruction = data.StructLayout({
    "header": Header,
    "target": TableTarget,
    "base": 16,
    "count": 16,
})

#: The row-wise ops SOFTMAX, LAYERNORM, ACTIVATION and REQUANT: ``rows`` rows from INP
#: (``src_base`` + r * ``src_stride``) to ``dst_bank`` (``dst_base`` + r * ``dst_stride``),
#: ``words`` output words per row.
#:
#: - SOFTMAX: a row of ``words`` x lanes INT8 scores to UINT8 probabilities; element j
#:   of row r is masked iff ``j >= length`` or (``causal`` and ``j > row_start + r +
#:   offset``); the exponential table comes from ``TABLE SOFTMAX``.
#: - LAYERNORM: a row of N = ``words`` x lanes INT8 codes normalised (``rms``, ``eps``,
#:   ``gamma_frac`` as in :func:`sim.golden.layernorm.layernorm`), gamma and beta from
#:   ``TABLE LAYERNORM``.
#: - ACTIVATION: every code through the activation table.
#: - REQUANT: INT32 values (4 input words per output word) requantized per column like
#:   GEMM's REQUANT post op, parameters at ``param_base`` in WGT (10 words per ``lanes``
#:   columns); with ``activate`` through the activation table too.
#:
#: 16-bit rows (``wide``): a row of N INT16 values takes 2 N / lanes words, element c in
#: word c // (lanes / 2), bytes 2 (c % (lanes / 2)) and the next (little-endian).
#:
#: - ``wide`` with LAYERNORM: the input rows are INT16 (``2 x words`` input words per row,
#:   :func:`sim.golden.int16_ops.layernorm_int16`); the output stays INT8.
#: - ``wide`` with REQUANT: INT16 outputs (16-bit zero point and clamp,
#:   :func:`sim.golden.int16_ops.requantize_int16`): ``words`` counts output words, two
#:   per ``lanes`` columns (so it must be even), and the INT32 input rows have ``2 x words``
#:   words; ``activate`` with ``wide`` is BAD_FIELD.
#: - ``residual`` with REQUANT: ``acc + residual * d`` before the bias
#:   (:func:`sim.golden.int16_ops.requantize_residual_int16`; INT8 outputs are the same
#:   value clamped to [-128, 127]); the INT8 residual row r is read from WGT at ``res_base +
#:   r * res_stride`` (one word per ``lanes`` columns, checked like every operand: ADDRESS).
#: - REQUANT with ``wide`` or ``residual`` takes :data:`PARAM_WORDS_WIDE` (13) parameter
#:   words per ``lanes`` columns (16-bit zero points, ``d``); without, :data:`PARAM_WORDS` (10).
#: - Any other opcode with ``wide`` or ``residual`` set raises BAD_FIELD.
VectorInstruction = data.StructLayout({
    "header": Header,
    "dst_bank": Bank,
    "rows": 16,
    "words": 16,
    "src_base": 16,
    "src_stride": 16,
    "dst_base": 16,
    "dst_stride": 16,
    "length": 16,
    "causal": 1,
    "row_start": 16,
    "offset": signed(16),
    "rms": 1,
    "eps": 40,
    "gamma_frac": 5,
    "param_base": 16,
    "activate": 1,
    "wide": 1,
    "residual": 1,
    "res_base": 16,
    "res_stride": 16,
})

Instruction = data.UnionLayout({
    "bits": unsigned(INSTRUCTION_BITS),
    "header": Header,
    "transfer": TransferInstruction,
    "gemm": GemmInstruction,
    "table": TableInstruction,
    "vector": VectorInstruction,
})

#: The layout of each opcode's instruction (NOP and SYNC carry only a header).
LAYOUTS = {
    Opcode.NOP: Header,
    Opcode.LOAD: TransferInstruction,
    Opcode.STORE: TransferInstruction,
    Opcode.GEMM: GemmInstruction,
    Opcode.TABLE: TableInstruction,
    Opcode.SYNC: Header,
    Opcode.SOFTMAX: VectorInstruction,
    Opcode.LAYERNORM: VectorInstruction,
    Opcode.ACTIVATION: VectorInstruction,
    Opcode.REQUANT: VectorInstruction,
}


def encode(opcode, *, pop_prev=False, pop_next=False, push_prev=False, push_next=False, **fields):
    """The 256-bit integer encoding of one instruction.

    ``fields`` are the opcode's layout fields (without ``header``); a missing field
    is 0; an unknown field or a value that does not fit raises ``ValueError``.
    """
    opcode = Opcode(opcode)
    layout = LAYOUTS[opcode]
    header = {"opcode": opcode, "pop_prev": int(pop_prev), "pop_next": int(pop_next),
              "push_prev": int(push_prev), "push_next": int(push_next)}
    if layout is Header:
        if fields:
            raise ValueError(f"{opcode.name} takes no fields, got {sorted(fields)}")
        return Header.const(header).as_value().value
    known = set(layout.members) - {"header"}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"{opcode.name} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
    for name, value in fields.items():
        shape = layout.members[name]
        if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
            fields[name] = shape(value)
            continue
        shape = Shape.cast(shape)
        low, high = ((-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed
                     else (0, (1 << shape.width) - 1))
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{opcode.name}.{name} = {value!r} does not fit in {shape}")
    return layout.const({"header": header, **fields}).as_value().value


def decode_opcode(word):
    """The opcode field of an encoded instruction (an ``int``)."""
    return word & 0xF
