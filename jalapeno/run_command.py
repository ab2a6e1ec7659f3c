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
    if not str(args.out).endswith(".npy"):
        raise UsageError(f"--out {args.out}: the output must be a .npy file")
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
    return run
