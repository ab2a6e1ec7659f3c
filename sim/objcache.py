"""A compiler wrapper for Verilator's ``OBJCACHE``: its runtime compiled once, not per model.

Every Verilator build compiles the same runtime (``verilated.cpp``, ``verilated_vpi.cpp``,
``verilated_threads.cpp``, ``verilated_dpi.cpp``: about 15 s of CPU) next to the model's
own C++; ``make test`` builds dozens of models. Verilator's Makefile runs each compile as
``$(OBJCACHE) $(CXX) <flags> -c -o <object> <source>``, and :func:`sim.toolchain.verilator_env`
sets ``OBJCACHE`` to this script, which keeps an object for reuse when

- it depends only on files outside the build folder (absolute paths in the compiler's
  ``-MMD`` dependency file: the runtime does; the model's files and cocotb's
  ``verilator.cpp``, which includes the model's header, do not), and
- the command line is the same but for the object's name (the same flags and defines,
  so a build with waveforms gets its own objects).

A kept object is used again only if every file it depends on still has the size and
modification time it had when it was compiled; otherwise it is compiled again. The cache
lives in ``<build>/sim/objcache/``; compiles of one object wait on a file lock, so two
pytest-xdist workers never compile the same runtime side by side.

Usage (what the Makefile runs): ``objcache.py <cache dir> <compiler> <arguments>...``.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def _output(args):
    """The object file (``-o``) and the source (the one ``.c``/``.cpp`` argument), or None."""
    if "-c" not in args or "-o" not in args:
        return None
    index = args.index("-o")
    if index + 1 >= len(args):
        return None
    sources = [a for a in args if a.endswith((".cpp", ".cc", ".c")) and not a.startswith("-")]
    if len(sources) != 1:
        return None
    return args[index + 1], sources[0]


def _dependencies(dep_file):
    """The prerequisites listed in a ``-MMD`` dependency file (Make syntax)."""
    text = dep_file.read_text().replace("\\\n", " ")
    _, _, prerequisites = text.partition(":")
    return prerequisites.split()


def _stamp(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _fresh(manifest):
    try:
        return all(_stamp(path) == stamp for path, stamp in manifest.items())
    except OSError:
        return False


def main(argv):
    cache_dir, command = Path(argv[0]), argv[1:]
    found = _output(command[1:])
    if found is None:
        os.execvp(command[0], command)
    obj, source = found
    obj_path = Path(obj)
    dep_path = obj_path.with_suffix(".d")
    # The key: the command with the object's name taken out, and the compiler it runs.
    index = command.index("-o")
    key_args = command[:index] + ["-o", "<object>"] + command[index + 2:]
    compiler = shutil.which(command[0]) or command[0]
    key = hashlib.sha256(json.dumps([key_args, os.path.realpath(compiler),
                                     _stamp(compiler) if os.path.exists(compiler) else None,
                                     os.path.abspath(source)]).encode()).hexdigest()[:24]
    entry = cache_dir / key
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_path = entry / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if _fresh(manifest["dependencies"]):
                shutil.copyfile(entry / "object.o", obj_path)
                if (entry / "object.d").exists():
                    shutil.copyfile(entry / "object.d", dep_path)
                return 0
        result = subprocess.run(command)
        if result.returncode != 0 or not obj_path.exists() or not dep_path.exists():
            return result.returncode
        dependencies = _dependencies(dep_path)
        if not all(os.path.isabs(path) for path in dependencies):
            return 0    # it includes the model's own files: not shareable
        manifest = {"command": command, "dependencies": {p: _stamp(p) for p in dependencies}}
        staging = cache_dir / f".{key}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copyfile(obj_path, staging / "object.o")
        shutil.copyfile(dep_path, staging / "object.d")
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
