"""``jalapeno run OP``: one op on the accelerator, arrays in and out as ``.npy`` files.

Every input is checked before anything runs; any problem (a missing file, a wrong
dtype or shape, a value the format cannot represent, a device error) is one line on
stderr and exit status 2, and the output file is not written.
"""

import json
import sys
from pathlib import Path

import numpy as np


__all__ = ["add_run_parser", "UsageError"]

DTYPES = ("int8", "uint8", "e4m3", "e5m2")


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _load(path, name):
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{name}: no such file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise UsageError(f"{name}: {path} is not a .npy array ({exc})") from None


def _matrix(array, name):
    if array.ndim != 2:
        raise UsageError(f"{name} must be a 2-D array, not shape {array.shape}")
    return array


def _integers(array, name, low, high):
    if array.dtype.kind not in "iu":
        raise UsageError(f"{name} must hold integers (dtype int8/uint8/...), not {array.dtype}")
    if array.size and (array.min() < low or array.max() > high):
        raise UsageError(f"{name} has values outside {low}..{high}")
    return (array.astype(np.int64) & 0xFF).astype(np.uint8)


def _fp8(array, name, fmt):
    from rtl.numerics.fp8_format import FP8Format
    from sim.golden.fp8_codec import ML_DTYPES
    from sim.golden.matmul import fp8_codes
    if array.dtype.kind != "f":
        raise UsageError(f"{name} must hold floats for --dtype {fmt}, not {array.dtype}")
    fp8_format = FP8Format.E4M3 if fmt == "e4m3" else FP8Format.E5M2
    codes = fp8_codes(array, fp8_format)
    back = codes.view(ML_DTYPES[fp8_format]).astype(np.float64)
    same = (back == array.astype(np.float64)) | (np.isnan(back) & np.isnan(array))
    if not same.all():
        index = tuple(int(i) for i in np.argwhere(~same)[0])
        raise UsageError(f"{name}{list(index)} = {float(array[index])!r} is not exactly representable "
                         f"in {fmt.upper()}")
    return codes


def _matmul_operands(args):
    from rtl.matmul.mode import MatmulMode
    a = _matrix(_load(args.a, "--a"), "A")
    b = _matrix(_load(args.b, "--b"), "B")
    if a.shape[1] != b.shape[0]:
        raise UsageError(f"A is {a.shape[0]}x{a.shape[1]} and B is {b.shape[0]}x{b.shape[1]}: "
                         "the inner dimensions differ")
    if args.dtype == "int8":
        return _integers(a, "A", -128, 127), _integers(b, "B", -128, 127), MatmulMode.INT8
    if args.dtype == "uint8":
        return _integers(a, "A", 0, 255), _integers(b, "B", -128, 127), MatmulMode.UINT8
    mode = MatmulMode.E4M3 if args.dtype == "e4m3" else MatmulMode.E5M2
    return _fp8(a, "A", args.dtype), _fp8(b, "B", args.dtype), mode


def _accelerator(args):
    if args.target != "sim":
        raise UsageError(f"--target {args.target}: only 'sim' is available here "
                         "(boards are reached with `jalapeno flash` and the serial link)")
    from sim.core_model import PRESETS

    from .accelerator import Accelerator
    from .sim_transport import SimTransport
    transport = SimTransport(PRESETS[args.core],
                             progress=lambda line: print(f"jalapeno: {line}", file=sys.stderr))
    return transport, Accelerator(transport)


def _write_outputs(args, result, stats):
    np.save(args.out, result)
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")


def _run_matmul(args):
    a, b, mode = _matmul_operands(args)
    _out_path(args)
    transport, accelerator = _accelerator(args)
    with transport:
        result = accelerator.matmul(a, b, mode)
        stats = dict(accelerator.last_stats or {})
    if mode.value >= 2:
        result = result.astype(np.uint32).view(np.float32)
    else:
        result = result.astype(np.int32)
    _write_outputs(args, result, stats)
    return 0


def _positive(value, name):
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a positive number, not {value}")
    return float(value)


def _out_path(args):
    if not str(args.out).endswith(".npy"):
        raise UsageError(f"--out {args.out}: the output must be a .npy file")


def _run_softmax(args):
    from sim.golden.softmax import exp_table
    x = _matrix(_load(args.x, "--x"), "X")
    _integers(x, "X", -128, 127)
    scale = _positive(args.scale, "--scale")
    lengths = None
    if args.valid_len:
        lengths = _load(args.valid_len, "--valid-len")
        if lengths.ndim != 1 or len(lengths) != x.shape[0] or lengths.dtype.kind not in "iu":
            raise UsageError(f"--valid-len must be {x.shape[0]} integers (one per row of X)")
        if lengths.size and (lengths.min() < 0 or lengths.max() > x.shape[1]):
            raise UsageError(f"--valid-len values must lie in 0..{x.shape[1]}")
    _out_path(args)
    transport, accelerator = _accelerator(args)
    with transport:
        result = accelerator.softmax(x.astype(np.int64), exp_table(scale), lengths=lengths,
                                     causal=args.causal)
        stats = dict(accelerator.last_stats or {})
    _write_outputs(args, result.astype(np.uint8), stats)
    return 0


def _run_layernorm(args):
    from sim.golden.layernorm import quantize_eps, quantize_params
    x = _matrix(_load(args.x, "--x"), "X")
    if x.dtype.kind not in "iu":
        raise UsageError(f"X must hold int8 or int32 codes, not {x.dtype}")
    in_scale = _positive(args.in_scale, "--in-scale")
    out_scale = _positive(args.out_scale, "--out-scale")
    n = x.shape[1]
    gamma = _load(args.gamma, "--gamma")
    beta = _load(args.beta, "--beta")
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p.shape != (n,) or p.dtype.kind != "f":
            raise UsageError(f"--{name} must be {n} floats (one per column of X)")
    if not args.eps >= 0:
        raise UsageError("--eps must be >= 0")
    _out_path(args)
    try:
        gamma_q, beta_q, gamma_frac = quantize_params(gamma, beta, out_scale)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    transport, accelerator = _accelerator(args)
    with transport:
        codes = x.astype(np.int64)
        cycles = 0
        if x.dtype.itemsize > 1 or codes.min(initial=0) < -128 or codes.max(initial=0) > 127:
            # Wider input: requantize to INT8 on the core first, at the scale that fits its range.
            from sim.golden.requantizer import quantize_multiplier
            if codes.min(initial=0) < -(1 << 31) or codes.max(initial=0) >= 1 << 31:
                raise UsageError("X must fit int32")
            peak = max(int(np.abs(codes).max(initial=0)), 1)
            int8_scale = in_scale * peak / 127
            multiplier, shift = quantize_multiplier(in_scale / int8_scale)
            codes = accelerator.requantize(codes, bias=0, multiplier=multiplier, shift=shift)
            cycles = accelerator.last_stats["cycles"]
            in_scale = int8_scale
        eps_q = quantize_eps(args.eps, in_scale, n)
        result = accelerator.layernorm(codes, gamma_q, beta_q, gamma_frac, eps_q, rms=args.rms)
        stats = dict(accelerator.last_stats or {})
        stats["cycles"] += cycles
    _write_outputs(args, result.astype(np.int8), stats)
    return 0


def _run_gelu(args):
    from sim.golden.activation import build_table, gelu
    x = _matrix(_load(args.x, "--x"), "X")
    _integers(x, "X", -128, 127)
    table = build_table(gelu, _positive(args.in_scale, "--in-scale"),
                        _positive(args.out_scale, "--out-scale"))
    _out_path(args)
    transport, accelerator = _accelerator(args)
    with transport:
        result = accelerator.activation(x.astype(np.int64), table)
        stats = dict(accelerator.last_stats or {})
    _write_outputs(args, result.astype(np.int8), stats)
    return 0


def _run(args):
    from .accelerator import DeviceError
    try:
        return args.run_func(args)
    except UsageError as exc:
        print(f"jalapeno run {args.op}: {exc}", file=sys.stderr)
    except (DeviceError, ValueError) as exc:
        print(f"jalapeno run {args.op}: {exc}", file=sys.stderr)
    return 2


def add_run_parser(sub):
    run = sub.add_parser("run", help="run one op on the accelerator (RTL simulation)")
    ops = run.add_subparsers(dest="op", metavar="OP", required=True)

    def common(p):
        p.add_argument("--out", required=True, help="output .npy file")
        p.add_argument("--stats", help="write the hardware counters and MAC utilization here (JSON)")
        p.add_argument("--target", default="sim", help="where to run (default: sim, the RTL "
                       "simulation on Verilator)")
        p.add_argument("--core", choices=("full", "small"), default="full",
                       help="simulated core: full = 16x16 (default; the first build takes "
                            "minutes), small = 4x4 (builds in seconds)")
        p.set_defaults(func=_run)

    p = ops.add_parser("matmul", help="C = A @ B (int8/uint8 -> int32, FP8 -> float32)")
    p.add_argument("--a", required=True, help="A, M x K (.npy)")
    p.add_argument("--b", required=True, help="B, K x N (.npy)")
    p.add_argument("--dtype", required=True, choices=DTYPES,
                   help="int8: A, B int8; uint8: A uint8, B int8; e4m3/e5m2: A, B float32 "
                        "values exactly representable in the format")
    common(p)
    p.set_defaults(run_func=_run_matmul)

    p = ops.add_parser("softmax", help="row softmax of int8 scores -> uint8 (scale 1/256)")
    p.add_argument("--x", required=True, help="X, int8 scores, rows x T (.npy)")
    p.add_argument("--scale", required=True, type=float, help="real value of one score step")
    p.add_argument("--valid-len", help="per-row valid lengths (.npy, one integer per row)")
    p.add_argument("--causal", action="store_true", help="mask element j of row r when j > r")
    common(p)
    p.set_defaults(run_func=_run_softmax)

    p = ops.add_parser("layernorm", help="LayerNorm/RMSNorm of int8 or int32 rows -> int8")
    p.add_argument("--x", required=True, help="X, int8 or int32 codes, rows x N (.npy)")
    p.add_argument("--in-scale", required=True, type=float, help="real value of one step of X")
    p.add_argument("--gamma", required=True, help="gamma, N floats (.npy)")
    p.add_argument("--beta", required=True, help="beta, N floats (.npy)")
    p.add_argument("--out-scale", required=True, type=float, help="real value of one step of Y")
    p.add_argument("--eps", type=float, default=1e-12, help="epsilon (default 1e-12, BERT's)")
    p.add_argument("--rms", action="store_true", help="RMSNorm instead of LayerNorm")
    common(p)
    p.set_defaults(run_func=_run_layernorm)

    p = ops.add_parser("gelu", help="GELU (erf) of int8 codes -> int8")
    p.add_argument("--x", required=True, help="X, int8 codes (.npy)")
    p.add_argument("--in-scale", required=True, type=float)
    p.add_argument("--out-scale", required=True, type=float)
    common(p)
    p.set_defaults(run_func=_run_gelu)
    return run
