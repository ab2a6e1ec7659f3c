"""FPGA metrics for `make bench`: build both boards and report fmax, throughput and resources.

``bench_fpga(results)`` (what scripts/bench.py calls) builds each board's default
configuration with :func:`jalapeno.fpga_flow.build` (minutes per board) into
``build/<board>/`` and adds, per board::

    fpga.<board>.fmax_mhz         nextpnr's fmax of the sync clock
    fpga.<board>.macs_per_cycle   rows x cols of the array
    fpga.<board>.gops             2 x MACs/cycle x fmax / 1000
    fpga.<board>.lut              logic cells used (TRELLIS_COMB / ICESTORM_LC)
    fpga.<board>.dsp              DSP blocks used (MULT18X18D / SB_MAC16)
    fpga.<board>.bram             block RAMs used (DP16KD / SB_RAM40_4K)
    fpga.<board>.ff               flip-flops used
    fpga.<board>.clock_mhz        the PLL frequency the bitstream runs at
    fpga.<board>.timing_met       1 if fmax >= clock_mhz, else 0
    fpga.<board>.build_s          wall-clock build time

A board whose build misses timing still reports its numbers (timing_met 0); a
board that cannot be built at all (missing tool, tool failure) is left out, with
the reason on stderr.

Run alone: ``python scripts/fpga_bench.py [--board BOARD ...] [--out FILE]``.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jalapeno.fpga_flow import BOARDS, FPGAFlowError, TimingError, build  # noqa: E402


def board_metrics(report):
    """The bench metrics of one board's build report (see the module docstring)."""
    board = report["board"]
    resources = report["resources"]
    return {
        f"fpga.{board}.fmax_mhz": report["sync_fmax_mhz"],
        f"fpga.{board}.macs_per_cycle": report["macs_per_cycle"],
        f"fpga.{board}.gops": report["gops"],
        f"fpga.{board}.lut": resources["lut"]["used"],
        f"fpga.{board}.dsp": resources["dsp"]["used"],
        f"fpga.{board}.bram": resources["bram"]["used"],
        f"fpga.{board}.ff": resources["ff"]["used"],
        f"fpga.{board}.clock_mhz": report["pll_mhz"],
        f"fpga.{board}.timing_met": int(report["timing"] == "pass"),
        f"fpga.{board}.build_s": report["build_seconds"]["total"],
    }


def bench_fpga(results=None, boards=tuple(BOARDS), progress=None):
    """Build ``boards`` (default: all) and add their metrics to ``results``; return it."""
    results = {} if results is None else results
    for board in boards:
        try:
            report = build(board, progress=progress)
        except TimingError as error:
            print(f"fpga_bench: {error}", file=sys.stderr)
            report = error.report
        except FPGAFlowError as error:
            print(f"fpga_bench: {board} skipped: {error}", file=sys.stderr)
            continue
        results.update(board_metrics(report))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", action="append", choices=tuple(BOARDS),
                        help="board to build (repeatable; default: all)")
    parser.add_argument("--out", help="also write the metrics to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no build progress")
    args = parser.parse_args(argv)
    results = bench_fpga(boards=args.board or tuple(BOARDS),
                         progress=None if args.quiet else print)
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
