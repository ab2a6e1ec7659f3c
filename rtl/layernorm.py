"""LayerNorm / RMSNorm of INT8 rows, statistics exact in integers, output INT8.

Per row of N INT8 codes ``x`` (one per-tensor input scale ``s_x``, zero point 0),
with a per-row descriptor and per-channel parameters loaded by the host::

    S1 = sum(x)  S2 = sum(x*x)                       exact, in the statistics pass
    D  = N*S2 - S1**2   (RMSNorm: N*S2)              = N**2 * variance (mean square)
    V  = D * 2**8 + eps                              eps in 2**-8 units of D
    (y, k) = rsqrt(V)                                1/sqrt(V) ~= y * 2**-(18+k)
    u  = N*x - S1       (RMSNorm: N*x)               = N * (x - mean)
    z  = (u * y) >> max(k - 4, 0)                    Q18: (x - mean) / sqrt(var + eps)
    q  = (z * gamma + (beta << (6 + gf)) + 2**(17 + gf)) >> (18 + gf)
    o  = clamp(q, -128, 127)

The input scale cancels in the normalization except in eps, which the host
converts (``eps_int = round(eps / s_x**2 * N**2 * 2**8)``). ``gamma`` (signed 18
bits, ``gf`` fraction bits, from the row descriptor) and ``beta`` (signed 24 bits,
12 fraction bits) already include the output scale and zero point
(``gamma / s_out``, ``beta / s_out + zp_out``), so the output is rounded once
(round half up, as the requantizer) and saturated. RMSNorm: no mean subtraction,
and the host loads beta = zero point only.

Widths for N <= 1024 (``max_hidden`` in general: n = ceil_log2(max_hidden + 1)):
S1 signed(8 + n + 1) = 20 bits, S2 unsigned(14 + n + 1) = 26 bits, D < 2**34,
V < 2**43 (unsigned 44), |u| <= 2**18 (signed 21 bits as built), u*y < 2**37,
|z| <= sqrt(N) * 2**18 (signed 26 bits), z*gamma < 2**43, the output sum signed 50.

rsqrt without a divider: ``V = m * 4**k``, ``m`` in [1, 4) in Q22 (truncated for
``V >= 2**22``), a 64-entry table (:func:`rsqrt_table`: 32 intervals of [1, 2), 32
of [2, 4)) gives y0 with relative error <= 0.8%, then one Newton-Raphson step
``y1 = y0 * (3 - m*y0**2) / 2`` with Q24 intermediates: max relative error
1.0e-4 (measured, ``sim/golden/layernorm.py``). It runs once per row, in 8 cycles.

INT16 input (``input_bits=16``, for residual streams with outliers): the same
algorithm with wider statistics and a wider normalizer in front of the same rsqrt
table and Newton step (S1 signed 28, S2 unsigned 42, D < 2**50, V < 2**59 in 60
bits, u signed 29, u*y signed 49); z, gamma, beta and the output stage are unchanged.
Bit-exact with :func:`sim.golden.int16_ops.layernorm_int16`, which equals the INT8
model on INT8 codes: a 16-bit unit serves INT8 rows sign-extended.

Golden model: ``sim/golden/layernorm.py`` (``sim/golden/int16_ops.py`` for INT16).
"""

import math

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2


__all__ = ["Y_FRAC", "M_FRAC", "EPS_FRAC", "EPS_BITS", "BETA_FRAC", "BETA_BITS", "GAMMA_BITS",
           "GAMMA_FRAC_MAX", "rsqrt_table", "layernorm_row_layout", "layernorm_param_layout",
           "LayerNorm"]


Y_FRAC = 18          #: fraction bits of y (rsqrt mantissa) and of z
M_FRAC = 22          #: fraction bits of the normalized m in [1, 4)
EPS_FRAC = 8         #: V = D * 2**EPS_FRAC + eps
EPS_BITS = 40        #: width of the descriptor's eps field
BETA_FRAC = 12       #: fraction bits of beta
BETA_BITS = 24       #: width of beta
GAMMA_BITS = 18      #: width of gamma (its fraction bits come with each row)
GAMMA_FRAC_MAX = 20  #: the largest gamma_frac
BANKS = 4            #: row buffer banks (rows in flight between input and output)


def rsqrt_table():
    """The 64 initial estimates of 1/sqrt(m), Q18: entry i covers [a, b) with
    a = 1 + i/32 (i < 32) or 2 + (i - 32)/16, and is 2 / (sqrt(a) + sqrt(b)), which
    balances the relative error at the two ends of the interval."""
    entries = []
    for i in range(64):
        a, width = (1 + i / 32, 1 / 32) if i < 32 else (2 + (i - 32) / 16, 1 / 16)
        entries.append(round(2 / (math.sqrt(a) + math.sqrt(a + width)) * (1 << Y_FRAC)))
    return entries


def layernorm_row_layout(max_hidden):
    """The per-row descriptor."""
    return data.StructLayout({
        "n": unsigned(ceil_log2(max_hidden + 1)),   # hidden size N (1..max_hidden, multiple of lanes)
        "rms": 1,                                   # 1: RMSNorm, 0: LayerNorm
        "eps": unsigned(EPS_BITS),                  # eps / s_x**2 * N**2 * 2**8, rounded
        "gamma_frac": unsigned(5),                  # fraction bits of gamma, 0..GAMMA_FRAC_MAX
    })


def layernorm_param_layout(max_hidden):
    """A per-channel parameter write."""
    return data.StructLayout({
        "index": unsigned(max(1, ceil_log2(max_hidden))),
        "gamma": signed(GAMMA_BITS),
        "beta": signed(BETA_BITS),
    })


class LayerNorm(wiring.Component):
    """LayerNorm or RMSNorm of INT8 (or INT16) rows to INT8 (the function in the module
    docstring).

    Bit-exact with :func:`sim.golden.layernorm.layernorm` (``input_bits=8``) and
    :func:`sim.golden.int16_ops.layernorm_int16` (``input_bits=16``; INT8 codes
    sign-extended give the INT8 results).

    Use: load gamma and beta of every channel on ``params`` (index, gamma, beta;
    applied at once: write them between layers, with no row in flight). For each row,
    send its descriptor on ``cmd`` and its N codes on ``i`` (N / lanes transfers,
    channel ``lanes * t + l`` in lane ``l`` of transfer ``t``); the N output codes
    come out on ``o`` in the same order, rows in order.

    Two passes per row over a row buffer in block RAM (``BANKS`` = 4 banks of
    ``max_hidden`` codes): the statistics pass writes the codes and sums S1 and S2
    as they arrive; the rsqrt unit (8 cycles, once per row) turns the sums into
    ``y, k``; the normalization pass reads the codes back with gamma and beta. The
    passes of different rows overlap, and a new row's descriptor is taken in the
    cycle of the previous row's last code, so in steady state the unit takes and
    gives one transfer (``lanes`` elements) per cycle for rows of N / lanes >= 10
    transfers. Backpressure on ``o`` stops the normalization pipeline; input keeps
    flowing until all four banks are full.

    Latency from a row's last input transfer to its first output: :attr:`latency`
    (16 cycles: 1 handoff + 8 rsqrt + 1 start + 6 pipeline) when the unit is idle.

    Parameters
    ----------
    max_hidden : int
        Largest N; a multiple of ``lanes``.
    lanes : int
        Elements per transfer; a power of two.
    input_bits : int
        8 (INT8 codes) or 16 (INT16 codes: wider row buffer, statistics, u and
        normalizer; same latency and throughput).

    Members
    -------
    cmd : In(stream.Signature(layernorm_row_layout(max_hidden)))
        One descriptor per row: n, rms, eps, gamma_frac.
    i : In(stream.Signature(ArrayLayout(signed(input_bits), lanes)))
        Input codes.
    o : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        Output codes.
    params : In(stream.Signature(layernorm_param_layout(max_hidden)))
        Per-channel gamma and beta writes (always ready).
    error : Out(1)
        Sticky: a descriptor was invalid (N = 0, N > ``max_hidden``, or N not a
        multiple of ``lanes``). Such a descriptor is consumed and dropped: it
        starts no row, takes no input and gives no output, so the unit never
        hangs on it and never writes past its row buffer.
    error_count : Out(16)
        How many descriptors were invalid (saturates).
    """

    latency = 16

    def __init__(self, max_hidden=1024, lanes=1, input_bits=8):
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1):
            raise TypeError(f"Lane count must be a positive power of two, not {lanes!r}")
        if not isinstance(max_hidden, int) or max_hidden < lanes or max_hidden % lanes:
            raise TypeError(f"Maximum hidden size must be a positive multiple of the lane "
                            f"count, not {max_hidden!r}")
        if input_bits not in (8, 16):
            raise TypeError(f"Input width must be 8 or 16 bits, not {input_bits!r}")
        if input_bits == 16 and max_hidden > 1024:
            raise TypeError("An INT16 LayerNorm is built for N <= 1024 (its V < 2**59)")
        self._max_hidden = max_hidden
        self._lanes = lanes
        self._input_bits = input_bits
        super().__init__({
            "cmd": In(stream.Signature(layernorm_row_layout(max_hidden))),
            "i": In(stream.Signature(data.ArrayLayout(signed(input_bits), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
            "params": In(stream.Signature(layernorm_param_layout(max_hidden))),
            "error": Out(1),
            "error_count": Out(16),
        })

    max_hidden = property(lambda self: self._max_hidden)
    lanes = property(lambda self: self._lanes)
    input_bits = property(lambda self: self._input_bits)

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        words = self._max_hidden // lanes
        nbits = ceil_log2(self._max_hidden + 1)
        wbits = max(1, ceil_log2(words))
        lane_bits = ceil_log2(lanes)
        xb = self._input_bits
        sq_bits = 2 * xb - 2                      # |x|**2 <= 2**(2 xb - 2)
        s1_shape = signed(xb + nbits + 1)
        s2_shape = unsigned(sq_bits + nbits + 1)
        d_shape = signed(nbits + sq_bits + nbits + 2)
        v_bits = 44 + 2 * (xb - 8)                # INT8: V < 2**43; INT16: V < 2**59
        v_shape = unsigned(v_bits)
        u_shape = signed(xb + nbits + 2)

        # --- memories ---------------------------------------------------------------------
        m.submodules.rows = rows = Memory(shape=data.ArrayLayout(signed(xb), lanes),
                                          depth=BANKS * words, init=[])
        row_write = rows.write_port()
        row_read = rows.read_port()
        param_reads = []
        for lane in range(lanes):
            mem = Memory(shape=data.StructLayout({"gamma": signed(GAMMA_BITS),
                                                  "beta": signed(BETA_BITS)}),
                         depth=words, init=[])
            m.submodules[f"params_{lane}"] = mem
            write = mem.write_port()
            m.d.comb += [
                write.addr.eq(self.params.payload.index >> lane_bits),
                write.data.gamma.eq(self.params.payload.gamma),
                write.data.beta.eq(self.params.payload.beta),
                write.en.eq(self.params.valid & ((self.params.payload.index & (lanes - 1)) == lane)),
            ]
            param_reads.append(mem.read_port())
        m.d.comb += self.params.ready.eq(1)

        # --- statistics pass --------------------------------------------------------------
        rows_started = Signal(3)
        rows_done = Signal(3)  # rows whose normalization pass has read the whole bank
        st_active = Signal()
        st_bank = Signal(2)
        st_idx = Signal(wbits + 1)
        st_words = Signal(wbits + 1)
        st_desc = Signal(layernorm_row_layout(self._max_hidden))
        st_s1 = Signal(s1_shape)
        st_s2 = Signal(s2_shape)

        # The rsqrt unit's job slot (one row).
        rs_busy = Signal()
        rs_step = Signal(3)
        rs_bank = Signal(2)
        rs_desc = Signal(layernorm_row_layout(self._max_hidden))
        rs_s1 = Signal(s1_shape)
        rs_s2 = Signal(s2_shape)

        in_flight = Signal(3)
        m.d.comb += in_flight.eq(rows_started - rows_done)
        bank_free = Signal()
        m.d.comb += bank_free.eq(in_flight < BANKS)

        st_last = Signal()
        m.d.comb += [
            st_last.eq(st_idx == st_words - 1),
            self.i.ready.eq(st_active & (~st_last | ~rs_busy)),
        ]
        i_fire = self.i.valid & self.i.ready
        row_ends = i_fire & st_last
        m.d.comb += self.cmd.ready.eq(bank_free & (~st_active | row_ends))
        cmd_fire = self.cmd.valid & self.cmd.ready
        cmd_n = self.cmd.payload.n
        cmd_bad = (cmd_n == 0) | (cmd_n > self._max_hidden)
        if lane_bits:
            cmd_bad = cmd_bad | (cmd_n[:lane_bits] != 0)
        with m.If(cmd_fire & cmd_bad):
            m.d.sync += self.error.eq(1)
            with m.If(self.error_count != 0xFFFF):
                m.d.sync += self.error_count.eq(self.error_count + 1)
        cmd_start = cmd_fire & ~cmd_bad

        lane_sum = Signal(signed(xb + lane_bits + 1))
        lane_sq = Signal(unsigned(sq_bits + lane_bits + 1))
        m.d.comb += [
            lane_sum.eq(sum(self.i.payload[lane] for lane in range(lanes))),
            lane_sq.eq(sum(self.i.payload[lane] * self.i.payload[lane] for lane in range(lanes))),
            row_write.addr.eq(st_bank * words + st_idx),
            row_write.data.eq(self.i.payload),
            row_write.en.eq(i_fire),
        ]
        with m.If(i_fire):
            m.d.sync += [
                st_idx.eq(st_idx + 1),
                st_s1.eq(st_s1 + lane_sum),
                st_s2.eq(st_s2 + lane_sq),
            ]
        with m.If(row_ends):
            m.d.sync += st_active.eq(0)
        with m.If(cmd_start):
            m.d.sync += [
                st_active.eq(1),
                st_bank.eq(rows_started[:2]),
                rows_started.eq(rows_started + 1),
                st_idx.eq(0),
                st_words.eq(self.cmd.payload.n >> lane_bits),
                st_desc.eq(self.cmd.payload),
                st_s1.eq(0),
                st_s2.eq(0),
            ]

        # --- rsqrt, once per row ----------------------------------------------------------
        # Normalization job slot (one row waiting for the normalization pass).
        nq_valid = Signal()
        nq_bank = Signal(2)
        nq_desc = Signal(layernorm_row_layout(self._max_hidden))
        nq_s1 = Signal(s1_shape)
        nq_y = Signal(unsigned(Y_FRAC + 1))
        nq_shift = Signal(5)
        nq_take = Signal()

        rs_d = Signal(d_shape)
        rs_v = Signal(v_shape)
        rs_k = Signal(5)
        rs_m = Signal(unsigned(M_FRAC + 2))
        rs_y0 = Signal(unsigned(Y_FRAC))
        rs_t1 = Signal(unsigned(25))
        rs_t2 = Signal(unsigned(26))
        rs_y1 = Signal(unsigned(Y_FRAC + 1))

        with m.If(row_ends):
            m.d.sync += [
                rs_busy.eq(1),
                rs_step.eq(0),
                rs_bank.eq(st_bank),
                rs_desc.eq(st_desc),
                rs_s1.eq(st_s1 + lane_sum),
                rs_s2.eq(st_s2 + lane_sq),
            ]

        msb = Signal(range(-1, v_bits))
        m.d.comb += msb.eq(-1)
        for bit in range(v_bits):
            with m.If(rs_v[bit]):
                m.d.comb += msb.eq(bit)
        k_comb = Signal(5)
        m.d.comb += k_comb.eq(Mux(msb < 0, 0, msb >> 1))
        widened = Signal(unsigned(v_bits + M_FRAC))
        m.d.comb += widened.eq(rs_v << M_FRAC)
        table = Array(Const(v, unsigned(Y_FRAC)) for v in rsqrt_table())
        m_high = rs_m[M_FRAC + 1]
        index = Signal(6)
        m.d.comb += index.eq(Mux(m_high, 32 + rs_m[M_FRAC - 4:M_FRAC + 1],
                                 rs_m[M_FRAC - 5:M_FRAC]))

        with m.If(rs_busy):
            with m.If(rs_step == 0):
                n = rs_desc.n
                m.d.sync += rs_d.eq(Mux(rs_desc.rms, n * rs_s2, n * rs_s2 - rs_s1 * rs_s1))
            with m.If(rs_step == 1):
                m.d.sync += rs_v.eq((rs_d.as_unsigned() << EPS_FRAC) + rs_desc.eps)
            with m.If(rs_step == 2):
                m.d.sync += [rs_k.eq(k_comb), rs_m.eq(widened >> (k_comb << 1))]
            with m.If(rs_step == 3):
                m.d.sync += rs_y0.eq(table[index])
            with m.If(rs_step == 4):
                m.d.sync += rs_t1.eq((rs_y0 * rs_y0) >> 12)
            with m.If(rs_step == 5):
                m.d.sync += rs_t2.eq((rs_m * rs_t1) >> M_FRAC)
            with m.If(rs_step == 6):
                m.d.sync += rs_y1.eq(Mux(rs_v == 0, 0, (rs_y0 * ((3 << 24) - rs_t2)) >> 25))
            with m.If(rs_step != 7):
                m.d.sync += rs_step.eq(rs_step + 1)
            with m.Elif(~nq_valid | nq_take):
                m.d.sync += [
                    rs_busy.eq(0),
                    nq_valid.eq(1),
                    nq_bank.eq(rs_bank),
                    nq_desc.eq(rs_desc),
                    nq_s1.eq(rs_s1),
                    nq_y.eq(rs_y1),
                    nq_shift.eq(Mux(rs_k > EPS_FRAC // 2, rs_k - EPS_FRAC // 2, 0)),
                ]
        with m.If(nq_take & ~(rs_busy & (rs_step == 7))):
            m.d.sync += nq_valid.eq(0)
        # A new job arriving while rsqrt is busy is impossible: i.ready holds the last
        # code back until the slot is free.

        # --- normalization pass -----------------------------------------------------------
        advance = ~self.o.valid | self.o.ready
        nm_active = Signal()
        nm_bank = Signal(2)
        nm_idx = Signal(wbits + 1)
        nm_words = Signal(wbits + 1)
        nm_desc = Signal(layernorm_row_layout(self._max_hidden))
        nm_s1 = Signal(s1_shape)
        nm_y = Signal(unsigned(Y_FRAC + 1))
        nm_shift = Signal(5)

        nm_last = Signal()
        m.d.comb += nm_last.eq(nm_idx == nm_words - 1)
        issue = advance & nm_active
        m.d.comb += nq_take.eq(nq_valid & (~nm_active | (issue & nm_last)))
        with m.If(issue):
            m.d.sync += nm_idx.eq(nm_idx + 1)
            with m.If(nm_last):
                m.d.sync += [nm_active.eq(0), rows_done.eq(rows_done + 1)]
        with m.If(nq_take):
            m.d.sync += [
                nm_active.eq(1),
                nm_bank.eq(nq_bank),
                nm_idx.eq(0),
                nm_words.eq(nq_desc.n >> lane_bits),
                nm_desc.eq(nq_desc),
                nm_s1.eq(nq_s1),
                nm_y.eq(nq_y),
                nm_shift.eq(nq_shift),
            ]

        m.d.comb += [row_read.addr.eq(nm_bank * words + nm_idx), row_read.en.eq(advance)]
        for read in param_reads:
            m.d.comb += [read.addr.eq(nm_idx), read.en.eq(advance)]

        row_params = data.StructLayout({
            "n": unsigned(nbits), "rms": 1, "s1": s1_shape, "y": unsigned(Y_FRAC + 1),
            "shift": unsigned(5), "gamma_frac": unsigned(5)})

        def stage(name, shape):
            return Signal(shape, name=name)

        p1_valid = stage("p1_valid", 1)
        p1_row = stage("p1_row", row_params)
        with m.If(advance):
            m.d.sync += [
                p1_valid.eq(issue),
                p1_row.n.eq(nm_desc.n), p1_row.rms.eq(nm_desc.rms), p1_row.s1.eq(nm_s1),
                p1_row.y.eq(nm_y), p1_row.shift.eq(nm_shift),
                p1_row.gamma_frac.eq(nm_desc.gamma_frac),
            ]

        # p1: memory data; u = N*x - S1 (RMSNorm: N*x).
        p2_valid = stage("p2_valid", 1)
        p2_row = stage("p2_row", row_params)
        p2_u = [stage(f"p2_u_{l}", u_shape) for l in range(lanes)]
        p2_gamma = [stage(f"p2_gamma_{l}", signed(GAMMA_BITS)) for l in range(lanes)]
        p2_beta = [stage(f"p2_beta_{l}", signed(BETA_BITS)) for l in range(lanes)]
        with m.If(advance):
            m.d.sync += [p2_valid.eq(p1_valid), p2_row.eq(p1_row)]
            for l in range(lanes):
                nx = p1_row.n * row_read.data[l]
                m.d.sync += [
                    p2_u[l].eq(Mux(p1_row.rms, nx, nx - p1_row.s1)),
                    p2_gamma[l].eq(param_reads[l].data.gamma),
                    p2_beta[l].eq(param_reads[l].data.beta),
                ]

        # p2: u * y.
        p3_valid = stage("p3_valid", 1)
        p3_row = stage("p3_row", row_params)
        p3_uy = [stage(f"p3_uy_{l}", signed(u_shape.width + Y_FRAC + 2)) for l in range(lanes)]
        p3_gamma = [stage(f"p3_gamma_{l}", signed(GAMMA_BITS)) for l in range(lanes)]
        p3_beta = [stage(f"p3_beta_{l}", signed(BETA_BITS)) for l in range(lanes)]
        with m.If(advance):
            m.d.sync += [p3_valid.eq(p2_valid), p3_row.eq(p2_row)]
            for l in range(lanes):
                m.d.sync += [p3_uy[l].eq(p2_u[l] * p2_row.y),
                             p3_gamma[l].eq(p2_gamma[l]), p3_beta[l].eq(p2_beta[l])]

        # p3: z = (u * y) >> shift (floor).
        p4_valid = stage("p4_valid", 1)
        p4_row = stage("p4_row", row_params)
        p4_z = [stage(f"p4_z_{l}", signed(26)) for l in range(lanes)]
        p4_gamma = [stage(f"p4_gamma_{l}", signed(GAMMA_BITS)) for l in range(lanes)]
        p4_beta = [stage(f"p4_beta_{l}", signed(BETA_BITS)) for l in range(lanes)]
        with m.If(advance):
            m.d.sync += [p4_valid.eq(p3_valid), p4_row.eq(p3_row)]
            for l in range(lanes):
                m.d.sync += [p4_z[l].eq(p3_uy[l] >> p3_row.shift),
                             p4_gamma[l].eq(p3_gamma[l]), p4_beta[l].eq(p3_beta[l])]

        # p4: z * gamma.
        p5_valid = stage("p5_valid", 1)
        p5_row = stage("p5_row", row_params)
        p5_zg = [stage(f"p5_zg_{l}", signed(26 + GAMMA_BITS)) for l in range(lanes)]
        p5_beta = [stage(f"p5_beta_{l}", signed(BETA_BITS)) for l in range(lanes)]
        with m.If(advance):
            m.d.sync += [p5_valid.eq(p4_valid), p5_row.eq(p4_row)]
            for l in range(lanes):
                m.d.sync += [p5_zg[l].eq(p4_z[l] * p4_gamma[l]), p5_beta[l].eq(p4_beta[l])]

        # p5: add beta and the rounding half, shift, clamp.
        gf = p5_row.gamma_frac
        with m.If(advance):
            m.d.sync += self.o.valid.eq(p5_valid)
            for l in range(lanes):
                total = Signal(signed(52), name=f"p5_total_{l}")
                q = Signal(signed(52 - Y_FRAC), name=f"p5_q_{l}")
                m.d.comb += [
                    total.eq(p5_zg[l] + (p5_beta[l] << (gf + (Y_FRAC - BETA_FRAC)))
                             + (Const(1, 52) << (gf + (Y_FRAC - 1)))),
                    q.eq(total >> (gf + Y_FRAC)),
                ]
                m.d.sync += self.o.payload[l].eq(Mux(q > 127, 127, Mux(q < -128, -128, q)))
        return m
