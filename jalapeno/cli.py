"""The `jalapeno` command line.

Subcommands so far:

- ``jalapeno units``: the top-level hardware units, their ports and latencies.
- ``jalapeno verilog [UNIT ...] [--out DIR]``: write Verilog for units.

- ``jalapeno run OP ...``: one op on the accelerator (the RTL simulation), see
  :mod:`jalapeno.run_command`.
"""

import argparse
import sys
from pathlib import Path

from . import __version__
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
    for name in args.units or UNITS:
        path = out / f"{name}.v"
        path.write_text(component_to_verilog(UNITS[name](), name))
        print(f"wrote {path}")
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
    p.set_defaults(func=_verilog)
    add_run_parser(sub)
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
