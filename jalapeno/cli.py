"""The `jalapeno` command line.

Subcommands so far:

- ``jalapeno units``: the top-level hardware units, their ports and latencies.
- ``jalapeno verilog [UNIT ...] [--out DIR]``: write Verilog for units.

- ``jalapeno run OP ...``: one op on the accelerator (the RTL simulation), see
  :mod:`jalapeno.run_command`.
- ``jalapeno build --board {ulx3s,icebreaker} [--frequency MHZ] [--out DIR]``: a
  bitstream and ``report.json`` (fmax, resources), see :mod:`jalapeno.fpga_flow`.
- ``jalapeno flash --board {ulx3s,icebreaker} [--bitstream FILE] [--persist]``:
  program the board with openFPGALoader, see :mod:`jalapeno.flash`.
"""

import argparse
import sys
from pathlib import Path

from . import __version__
from .embed_command import add_embed_parser
from .run_command import add_run_parser


def _units(args):
    from amaranth.hdl import Fragment
    from amaranth.lib import wiring

    from rtl.units import UNITS

    for name, factory in UNITS.items():
        unit = factory()
        Fragment.get(unit, platform=None).prepare()  # elaborate the whole hierarchy
        ports = ", ".join(f"{port} ({'in' if member.flow == wiring.In else 'out'})"
                          for port, member in unit.signature.members.items())
        print(f"{name:<16} latency {unit.latency:>2}  ports: {ports}")
    return 0


def _verilog(args):
    from rtl.units import UNITS
    from sim.verilog import component_to_verilog

    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        print(f"jalapeno: unknown unit(s) {', '.join(unknown)}; known: {', '.join(UNITS)}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.boards_only:
        for name in args.units or UNITS:
            path = out / f"{name}.v"
            path.write_text(component_to_verilog(UNITS[name](), name))
            print(f"wrote {path}")
    if args.board:
        from .fpga_flow import FPGAFlowError, board_verilog
        for board in args.board:
            try:
                for path in board_verilog(board, out / "boards"):
                    print(f"wrote {path}")
            except FPGAFlowError as error:
                print(f"jalapeno: {error}", file=sys.stderr)
                return 1
    return 0


def _build(args):
    from rtl.boards.pll import PLLError

    from .fpga_flow import FPGAFlowError, build

    try:
        report = build(args.board, args.out, args.frequency, seed=args.seed, payload=args.payload,
                       fp8=args.fp8)
    except (FPGAFlowError, PLLError) as error:   # TimingError too: the report is written
        print(f"jalapeno: {error}", file=sys.stderr)
        return 1
    print(f"{report['board']}: fmax {report['sync_fmax_mhz']:.2f} MHz at "
          f"{report['pll_mhz']:.2f} MHz, {report['macs_per_cycle']} MACs/cycle, "
          f"{report['gops']:.2f} GOPS; bitstream {report['bitstream']}")
    return 0


def _flash(args):
    from .flash import FlashError, flash

    try:
        flash(args.board, args.bitstream, persist=args.persist)
    except FlashError as error:
        print(f"jalapeno: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="jalapeno", description="Jalapeño Transformer accelerator")
    parser.add_argument("--version", action="version", version=f"jalapeno {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("units", help="list the top-level hardware units")
    p.set_defaults(func=_units)
    p = sub.add_parser("verilog", help="write Verilog for hardware units")
    p.add_argument("units", nargs="*", metavar="UNIT", help="units to export (default: all)")
    p.add_argument("--out", default="build/verilog", help="output folder (default: build/verilog)")
    p.add_argument("--board", action="append", choices=("ulx3s", "icebreaker"),
                   help="also write BOARD's top as the FPGA flow synthesizes it, into OUT/boards/ "
                        "(repeatable)")
    p.add_argument("--boards-only", action="store_true", help="no unit Verilog")
    p.set_defaults(func=_verilog)
    add_run_parser(sub)
    add_embed_parser(sub)
    boards = ("ulx3s", "icebreaker")
    p = sub.add_parser("build", help="build a board's bitstream (Yosys, nextpnr) and report fmax")
    p.add_argument("--board", required=True, choices=boards)
    p.add_argument("--frequency", type=float, metavar="MHZ",
                   help="sync clock to ask the PLL for (default: the board's)")
    p.add_argument("--out", metavar="DIR", help="build folder (default: build/BOARD)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default: 1)")
    p.add_argument("--payload", choices=("core", "engine"),
                   help="the accelerator core behind the UART link, or the placeholder "
                        "matmul engine (default: the board's; docs/fpga.md)")
    p.add_argument("--fp8", action="store_true",
                   help="build the core with its FP8 modes (ULX3S: 30 MHz by default)")
    p.set_defaults(func=_build)
    p = sub.add_parser("flash", help="program a board with openFPGALoader (builds if needed)")
    p.add_argument("--board", required=True, choices=boards)
    p.add_argument("--bitstream", metavar="FILE", help="default: build/BOARD/BOARD.bit|.bin")
    p.add_argument("--persist", action="store_true",
                   help="ULX3S: write the SPI flash instead of SRAM")
    p.set_defaults(func=_flash)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
