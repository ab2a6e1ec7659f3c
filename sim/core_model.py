"""Build the core's Verilator model with its C++ harness (``sim/core_harness/harness.cpp``).

The harness clocks the core in C++ and answers its memory port with a memory model
(configurable latency and bandwidth), so no Python runs per cycle; the host runtime
(:class:`jalapeno.sim_transport.SimTransport`) drives it over a pipe. Builds are
cached under ``build/sim/core-<key>/``, keyed by the RTL sources (``rtl/**/*.py``), the
Amaranth version, the core's parameters, the harness and wrapper sources, the Verilator
and C++ compiler versions and every option — so finding a cached model needs no
elaboration — and shared between processes by a file lock.

Speed (see docs/core.md, "Simulation speed"): the core sits in a wrapper that registers
its inputs (:func:`sim_wrapper`), so each clock cycle evaluates the design once; the
model's C++ is compiled with ``-O2`` (:data:`MAKE_ARGS`) instead of Verilator's ``-Os``.
"""

import dataclasses
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

from .harness_build import build_harness
from .toolchain import verilator_version
from .verilog import component_to_verilog


__all__ = ["CoreConfig", "PRESETS", "build_core_model"]

HARNESS = Path(__file__).resolve().parent / "core_harness" / "harness.cpp"
#: How the Verilog is written (sim/verilog.py): part of the cache key.
VERILOG_BACKEND = Path(__file__).resolve().parent / "verilog.py"
#: Verilator's options. ``--inline-mult 1`` keeps the shared PE module a module (inlining
#: it builds slower and runs no faster); ``--x-assign/--x-initial fast`` (Amaranth's
#: Verilog initialises every register anyway).
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--inline-mult", "1",
                  "--x-assign", "fast", "--x-initial", "fast")
#: Make variables for the C++ build: the per-cycle code at ``-O2`` (Verilator's default
#: ``-Os`` leaves its wide-arithmetic helpers out of line and runs about 15 % slower);
#: the initialisation code (``OPT_SLOW``) stays unoptimised, which keeps the build short.
MAKE_ARGS = ("OPT_FAST=-O2",)


@dataclasses.dataclass(frozen=True)
class CoreConfig:
    """The parameters of :class:`rtl.core.Core` a model is built with."""
    lanes: int = 16
    inp_words: int = 16384
    wgt_words: int = 16384
    out_words: int = 16384
    max_rows: int = 512
    dram_words: int = 1 << 22
    fp8: bool = True
    queue_depth: int = 32
    max_length: int = 512
    max_hidden: int = 1024
    sched_queue_depth: int = 32
    sched_inflight: int = 4
    vector_units: bool = True
    requantizer: bool = True
    scheduler: bool = True
    #: The ULX3S core's timing options (registered PE multipliers, the accumulator's and
    #: the range checks' extra stages); the same results in a few more cycles.
    pe_multiplier: str = None
    accumulator_stage: bool = False
    range_check_stage: bool = False
    broadcast_stage: bool = False
    read_stage: bool = False
    counter_stage: bool = False

    def core(self):
        from rtl.core import Core
        return Core(shared_pe_module=True, **dataclasses.asdict(self))


#: Named configurations: ``full`` is the default 16 x 16 core (a first build takes 2 to 3
#: minutes); ``int8`` the same without the FP8 modes (what the INT8 MiniLM program and
#: the ULX3S build use: the same cycles, a model that simulates about twice as fast);
#: ``small`` a 4 x 4 core that builds in about 30 s, for tests and quick tries (its
#: LayerNorm takes MiniLM's rows of 384; 8,192-word INP and WGT hold the FP8 MiniLM
#: program's FFN down GEMM, K = 5,382, so the FP8 MiniLM test needs no model of its own;
#: OUT has 4,096 words).
PRESETS = {
    "full": CoreConfig(),
    "int8": CoreConfig(fp8=False),
    "small": CoreConfig(lanes=4, inp_words=8192, wgt_words=8192, out_words=4096, max_rows=128,
                        dram_words=1 << 20, queue_depth=8, max_length=128, max_hidden=512,
                        sched_queue_depth=16),
}


def rtl_digest():
    """A hash of every source the core's Verilog is generated from (the ``rtl`` package but
    its board tops, which no core imports, and the Amaranth version): the cache key, so a
    cached model is found without elaborating."""
    digest = hashlib.sha256(metadata.version("amaranth").encode())
    root = Path(__file__).resolve().parent.parent / "rtl"
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "boards":
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


#: Inputs of the core the wrapper passes straight through (not registered).
DIRECT_INPUTS = ("clk", "reg_addr")


def sim_wrapper(core_verilog, name="core_sim", core_name="core"):
    """Verilog of a wrapper around module ``core_name`` that registers every input but
    :data:`DIRECT_INPUTS`, on ``clk`` or on a pulse of its own ``capture`` input.

    Verilator evaluates all logic that depends on a top-level input in every ``eval()``
    (its "input combinational" region); the core's ``rst``, ``soft_reset`` and stream
    valids reach nearly every register's next-state logic, so without the wrapper the
    whole design is evaluated in each of the two ``eval()`` calls of a clock cycle
    besides the clock edge itself. Registered inputs leave only the register read mux
    (``reg_addr``) there. The harness writes the inputs of the next cycle before each
    clock edge (``capture`` loads them without clocking the core, after a command from
    the host changed them), so the core sees the same inputs in the same cycles.
    """
    module = re.search(rf"^module {core_name}\((.*?)\);\n(.*?)^endmodule", core_verilog,
                       re.S | re.M)
    if module is None:
        raise ValueError(f"no module {core_name} in the Verilog")
    ports = re.findall(r"^  (input|output) (?:(\[\d+:0\]) )?(\w+);$", module.group(2), re.M)
    names = {name.strip() for name in module.group(1).split(",")}
    if {port for _, _, port in ports} != names or ("input", "", "clk") not in ports:
        raise ValueError(f"unexpected port declarations in module {core_name}")
    lines = [f"module {name}(capture, {', '.join(port for _, _, port in ports)});",
             "  input capture;"]
    connections = []
    for direction, width, port in ports:
        width = f"{width} " if width else ""
        lines.append(f"  {direction} {width}{port};")
        if direction == "input" and port not in DIRECT_INPUTS:
            lines.append(f"  reg {width}{port}_q;")
            lines.append(f"  always @(posedge clk, posedge capture) {port}_q <= {port};")
            connections.append(f".{port}({port}_q)")
        else:
            connections.append(f".{port}({port})")
    lines.append(f"  {core_name} {core_name}({', '.join(connections)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


@cache
def compiler_version():
    """The first line of the C++ compiler's ``--version`` (the one Verilator's make uses)."""
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def build_core_model(config=CoreConfig(), *, progress=None):
    """The path of the harness executable for ``config``, building it if needed."""
    key_material = json.dumps({
        "rtl": rtl_digest(), "config": dataclasses.asdict(config),
        "harness": HARNESS.read_text(), "wrapper": inspect.getsource(sim_wrapper),
        "verilog_backend": VERILOG_BACKEND.read_text(),
        "direct_inputs": DIRECT_INPUTS, "verilator": verilator_version(),
        "compiler": compiler_version(), "args": VERILATOR_ARGS, "make": MAKE_ARGS,
    }, sort_keys=True)

    def write_verilog(build_dir):
        core_verilog = component_to_verilog(config.core(), "core", for_simulation=True)
        path = build_dir / "core.v"
        path.write_text(core_verilog + "\n" + sim_wrapper(core_verilog))
        return path

    return build_harness("core", key_material, write_verilog, harness=HARNESS, top="core_sim",
                         verilator_args=VERILATOR_ARGS, make_args=MAKE_ARGS, jobs=2,
                         progress=progress,
                         building=f"building the core model ({config.lanes}x{config.lanes} "
                                  "array) with Verilator (once per design; about 2 minutes "
                                  "for a 16x16 array)")


if __name__ == "__main__":
    print(build_core_model(CoreConfig(lanes=int(sys.argv[1]) if len(sys.argv) > 1 else 4),
                           progress=print))
