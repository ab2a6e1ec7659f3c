"""Build a Verilator model with its own C++ main (a harness that clocks it), once per design.

The core (:mod:`sim.core_model`) and the scheduler (:mod:`sim.scheduler_model`) are
simulated this way: no Python runs per cycle. :func:`build_harness` caches the build under
``build/sim/<name>-<key>/`` (``key`` hashes everything the build depends on, given by the
caller) and shares it between processes through a file lock.
"""

import fcntl
import hashlib
import shutil
import subprocess
import time

from .toolchain import build_root, verilator_bin_dir, verilator_env


__all__ = ["build_harness"]


def build_harness(name, key_material, write_verilog, *, harness, top, verilator_args, make_args,
                  jobs=2, progress=None, building=None):
    """The path of the executable ``build/sim/<name>-<key>/obj/V<name>``, built if needed.

    ``key_material`` (a string) names the design and every build input; ``write_verilog
    (build_dir)`` writes the Verilog and returns its path (called only when building);
    ``harness`` is the C++ main, ``top`` the top module; ``building`` is the progress line
    printed before the build (``progress`` receives it and the time taken).
    """
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    build_dir = build_root() / "sim" / f"{name}-{key}"
    prefix = f"V{name}"
    executable = build_dir / "obj" / prefix
    lock_path = build_root() / "sim" / f".{name}-{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (build_dir / ".built").exists():
                if build_dir.exists():
                    shutil.rmtree(build_dir)
                build_dir.mkdir(parents=True)
                verilog = write_verilog(build_dir)
                start = time.monotonic()
                if progress:
                    progress(building or f"building the {name} model with Verilator in {build_dir}")
                command = [str(verilator_bin_dir() / "verilator"), "--cc", "--exe", "--build",
                           "-j", str(jobs), *verilator_args, "--top-module", top,
                           "--prefix", prefix,
                           *(arg for make_arg in make_args for arg in ("-MAKEFLAGS", make_arg)),
                           "--Mdir", str(build_dir / "obj"), "-o", prefix,
                           str(verilog), str(harness)]
                result = subprocess.run(command, env=verilator_env(), cwd=build_dir,
                                        capture_output=True, text=True)
                (build_dir / "build.log").write_text(
                    " ".join(command) + "\n" + result.stdout + result.stderr
                    + f"\n(took {time.monotonic() - start:.0f} s)\n")
                if result.returncode != 0 or not executable.exists():
                    lines = (result.stdout + result.stderr).splitlines()
                    errors = [line for line in lines if "error" in line.lower()]
                    detail = "\n".join(errors[-20:] or lines[-30:])
                    raise RuntimeError(f"Verilator build of the {name} model failed "
                                       f"(log: {build_dir / 'build.log'}):\n{detail}")
                (build_dir / ".built").write_text(key_material)
                if progress:
                    progress(f"built the {name} model in {time.monotonic() - start:.0f} s")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return executable
