"""Build the core's Verilator model with its C++ harness (``sim/core_harness/harness.cpp``).

The harness clocks the core in C++ and answers its memory port with a memory model
(configurable latency and bandwidth), so no Python runs per cycle; the host runtime
(:class:`jalapeno.sim_transport.SimTransport`) drives it over a pipe. Builds are
cached under ``build/sim/core-<key>/``, keyed by the RTL sources (``rtl/**/*.py``), the
Amaranth version, the core's parameters, the harness source, the Verilator version and
the options — so finding a cached model needs no elaboration — and shared between
processes by a file lock.
"""

import dataclasses
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .toolchain import build_root, verilator_bin_dir, verilator_env, verilator_version
from .verilog import component_to_verilog


__all__ = ["CoreConfig", "PRESETS", "build_core_model"]

HARNESS = Path(__file__).resolve().parent / "core_harness" / "harness.cpp"
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--inline-mult", "1",
                  "--x-assign", "fast", "--x-initial", "fast")


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

    def core(self):
        from rtl.core import Core
        return Core(shared_pe_module=True, **dataclasses.asdict(self))


#: Named configurations: ``full`` is the default 16 x 16 core (a first build takes about
#: 5 minutes); ``small`` a 4 x 4 core that builds in about 20 s, for tests and quick tries.
PRESETS = {
    "full": CoreConfig(),
    "small": CoreConfig(lanes=4, inp_words=4096, wgt_words=4096, out_words=4096, max_rows=128,
                        dram_words=1 << 18, queue_depth=8, max_length=128, max_hidden=256,
                        sched_queue_depth=16),
}


def _rtl_digest():
    """A hash of every source the core's Verilog is generated from (the ``rtl`` package and
    the Amaranth version): the cache key, so a cached model is found without elaborating."""
    digest = hashlib.sha256(metadata.version("amaranth").encode())
    root = Path(__file__).resolve().parent.parent / "rtl"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_core_model(config=CoreConfig(), *, progress=None):
    """The path of the harness executable for ``config``, building it if needed."""
    key_material = json.dumps({
        "rtl": _rtl_digest(), "config": dataclasses.asdict(config),
        "harness": HARNESS.read_text(), "verilator": verilator_version(), "args": VERILATOR_ARGS,
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    build_dir = build_root() / "sim" / f"core-{key}"
    executable = build_dir / "obj" / "Vcore"
    lock_path = build_root() / "sim" / f".core-{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (build_dir / ".built").exists():
                if build_dir.exists():
                    shutil.rmtree(build_dir)
                build_dir.mkdir(parents=True)
                (build_dir / "core.v").write_text(component_to_verilog(config.core(), "core"))
                start = time.monotonic()
                if progress:
                    progress(f"building the core model ({config.lanes}x{config.lanes} array) "
                             f"with Verilator in {build_dir} (once per design; a few minutes "
                             f"for a 16x16 array)")
                command = [str(verilator_bin_dir() / "verilator"), "--cc", "--exe", "--build",
                           "-j", "2", *VERILATOR_ARGS, "--top-module", "core",
                           "--Mdir", str(build_dir / "obj"), "-o", "Vcore",
                           str(build_dir / "core.v"), str(HARNESS)]
                result = subprocess.run(command, env=verilator_env(), cwd=build_dir,
                                        capture_output=True, text=True)
                (build_dir / "build.log").write_text(result.stdout + result.stderr)
                if result.returncode != 0 or not executable.exists():
                    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
                    raise RuntimeError(f"Verilator build of the core failed "
                                       f"(log: {build_dir / 'build.log'}):\n{tail}")
                (build_dir / ".built").write_text(key_material)
                if progress:
                    progress(f"built the core model in {time.monotonic() - start:.0f} s")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return executable


if __name__ == "__main__":
    print(build_core_model(CoreConfig(lanes=int(sys.argv[1]) if len(sys.argv) > 1 else 4),
                           progress=print))
