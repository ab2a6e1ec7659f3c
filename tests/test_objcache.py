"""The OBJCACHE wrapper that shares Verilator's runtime objects between model builds."""

import subprocess
import sys

import pytest

from sim import objcache
from sim.toolchain import verilator_env


# A stand-in compiler: writes ``<object>`` (the source's text and a run count) and a
# ``-MMD`` dependency file listing the source and the headers named in $DEPS, and counts
# its runs in $RUNS.
FAKE_COMPILER = """#!/bin/sh
out=""; src=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
    *.cpp) src="$1" ;;
  esac
  shift
done
echo run >> "$RUNS"
cat "$src" > "$out"
printf '%s: %s %s\\n' "$(basename "$out")" "$src" "$DEPS" > "${out%.o}.d"
"""


@pytest.fixture
def compiler(tmp_path, monkeypatch):
    path = tmp_path / "fake-cxx"
    path.write_text(FAKE_COMPILER)
    path.chmod(0o755)
    header = tmp_path / "include" / "runtime.h"
    header.parent.mkdir()
    header.write_text("// v1\n")
    source = tmp_path / "include" / "runtime.cpp"
    source.write_text("runtime v1\n")
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DEPS", str(header))
    return path, source, header


def compile_in(build, cache, compiler, source, *flags):
    build.mkdir(exist_ok=True)
    command = [sys.executable, objcache.__file__, str(cache), str(compiler), "-Os", *flags,
               "-MMD", "-c", "-o", "runtime.o", str(source)]
    subprocess.run(command, cwd=build, check=True)
    return (build / "runtime.o").read_text()


def runs(tmp_path):
    return len((tmp_path / "runs").read_text().split())


def test_a_second_build_reuses_the_object(tmp_path, compiler):
    cxx, source, _ = compiler
    cache = tmp_path / "cache"
    assert compile_in(tmp_path / "a", cache, cxx, source) == "runtime v1\n"
    assert compile_in(tmp_path / "b", cache, cxx, source) == "runtime v1\n"
    assert runs(tmp_path) == 1
    assert (tmp_path / "b" / "runtime.d").read_text() == (tmp_path / "a" / "runtime.d").read_text()


def test_other_flags_compile_again(tmp_path, compiler):
    cxx, source, _ = compiler
    cache = tmp_path / "cache"
    compile_in(tmp_path / "a", cache, cxx, source)
    compile_in(tmp_path / "b", cache, cxx, source, "-DVM_TRACE=1")
    assert runs(tmp_path) == 2


def test_a_changed_dependency_compiles_again(tmp_path, compiler):
    cxx, source, header = compiler
    cache = tmp_path / "cache"
    compile_in(tmp_path / "a", cache, cxx, source)
    header.write_text("// v2, longer\n")
    compile_in(tmp_path / "b", cache, cxx, source)
    source.write_text("runtime v2, longer\n")
    assert compile_in(tmp_path / "c", cache, cxx, source) == "runtime v2, longer\n"
    assert runs(tmp_path) == 3


def test_objects_that_include_the_models_files_are_not_kept(tmp_path, compiler, monkeypatch):
    cxx, source, header = compiler
    monkeypatch.setenv("DEPS", f"{header} Vtop.h")     # relative: the model's own header
    cache = tmp_path / "cache"
    compile_in(tmp_path / "a", cache, cxx, source)
    compile_in(tmp_path / "b", cache, cxx, source)
    assert runs(tmp_path) == 2


def test_a_failing_compile_fails_and_keeps_nothing(tmp_path):
    build = tmp_path / "a"
    build.mkdir()
    (build / "broken.cpp").write_text("int main( {\n")
    result = subprocess.run([sys.executable, objcache.__file__, str(tmp_path / "cache"), "c++",
                             "-MMD", "-c", "-o", "broken.o", str(build / "broken.cpp")],
                            cwd=build, capture_output=True, text=True)
    assert result.returncode != 0 and "error" in result.stderr
    assert not any(p.name == "manifest.json" for p in (tmp_path / "cache").rglob("*"))


def test_verilator_builds_compile_through_the_cache():
    assert "OBJCACHE=" in verilator_env()["MAKEFLAGS"]
    assert verilator_env({"MAKEFLAGS": "OBJCACHE="})["MAKEFLAGS"].split().count("OBJCACHE=") == 1
