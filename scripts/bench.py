"""`make bench`: measure the units and write build/bench/results.json (metric name -> number).

Cycle counts come from the simulated hardware; wall-clock figures (simulation
speed) are noisy on shared machines and are reported as the best of a few runs.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from amaranth.hdl import Fragment  # noqa: E402

from rtl.numerics.fp8_multiplier import FP8Multiplier, FP8Operands  # noqa: E402
from rtl.units import UNITS  # noqa: E402
from sim.cocotb_runner import run_cocotb  # noqa: E402
from sim.payload import pack  # noqa: E402
from sim.pysim import run_stream  # noqa: E402


def bench_pysim_speed(results, transfers=20000, repeats=3):
    rng = np.random.default_rng(0)
    payloads = pack(FP8Operands, dict(a=rng.integers(0, 256, transfers), b=rng.integers(0, 256, transfers)))
    best = 0.0
    for _ in range(repeats):
        cycles = []
        start = time.perf_counter()
        run_stream(FP8Multiplier(), payloads, cycle_counter=cycles)
        best = max(best, cycles[0] / (time.perf_counter() - start))
    results["sim.pysim.cycles_per_s"] = round(best)


def bench_verilator_speed(results, transfers=200000, repeats=3):
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        for _ in range(repeats):
            run_cocotb(FP8Multiplier(), name="fp8_multiplier", test_module="sim.speed_bench",
                       extra_env={"SPEED_CYCLES": transfers, "SPEED_RESULT": out,
                                  "COCOTB_LOG_LEVEL": "WARNING"})
            measured = json.loads(out.read_text())
            best = max(best, measured["cycles"] / measured["seconds"])
    results["sim.verilator.cycles_per_s"] = round(best)


def bench_unit_latency(results):
    for name, factory in UNITS.items():
        unit = factory()
        Fragment.get(unit, platform=None)  # elaborate it: the latency is checked, not just read
        results[f"{name}.latency_cycles"] = unit.latency


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/bench/results.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    for bench in (bench_unit_latency, bench_pysim_speed, bench_verilator_speed):
        print(f"-- {bench.__name__}", flush=True)
        bench(results)
    out.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    width = max(map(len, results))
    for name, value in sorted(results.items()):
        print(f"{name:<{width}}  {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
