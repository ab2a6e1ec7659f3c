"""`make bench`: measure the units and write build/bench/results.json (metric name -> number).

Cycle counts come from the simulated hardware; wall-clock figures (simulation
speed) are noisy on shared machines and are reported as the best of a few runs.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from amaranth.hdl import Fragment  # noqa: E402

from rtl.matmul.array import SystolicArray  # noqa: E402
from rtl.matmul.engine import MatmulEngine  # noqa: E402
from rtl.numerics.fp8_multiplier import FP8Multiplier, FP8Operands  # noqa: E402
from rtl.units import UNITS  # noqa: E402
from sim.cocotb_runner import run_cocotb  # noqa: E402
from sim.payload import pack  # noqa: E402
from sim.pysim import run_stream  # noqa: E402
from sim.synth import synthesize  # noqa: E402
from sim.verilog import component_to_verilog  # noqa: E402


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
        Fragment.get(unit, platform=None).prepare()  # elaborate the whole hierarchy
        results[f"{name}.latency_cycles"] = unit.latency


def bench_matmul(results, size=16, max_rows=128):
    """Utilization on a MiniLM projection (M=128, K=384, N=384) and fill/drain per pass,
    from the engine's own cycle counter, on the 16 x 16 engine."""
    engine = lambda: MatmulEngine(rows=size, cols=size, max_rows=max_rows,  # noqa: E731
                                  shared_pe_module=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "matmul.json"

        def run(mode, m, k, n):
            run_cocotb(engine(), name=f"matmul_engine_{size}x{size}",
                       verilator_args=("--inline-mult", "1"),
                       test_module="sim.matmul_utilization",
                       extra_env=dict(ROWS=size, COLS=size, MAX_ROWS=max_rows, MODE=mode,
                                      M=m, K=k, N=n, RESULT=out, COCOTB_LOG_LEVEL="WARNING"))
            return json.loads(out.read_text())

        for mode in ("INT8", "E4M3"):
            measured = run(mode, 128, 384, 384)
            results[f"matmul.{mode.lower()}.utilization"] = round(measured["utilization"], 5)
            results[f"matmul.{mode.lower()}.cycles"] = measured["cycles"]
        # One pass of one row: the counter sees the weight load (size cycles), the row,
        # and the fill and drain of the pipeline.
        single = run("INT8", 1, size, size)
        results["matmul.fill_drain_cycles"] = single["cycles"] - size - 1
    results["matmul.peak_macs_per_cycle"] = size * size


def bench_synthesis(results):
    """Yosys synthesis of a 4 x 4 systolic array: DSP and LUT use per family."""
    with tempfile.TemporaryDirectory() as tmp:
        for family, fp8, prefix in (("ecp5", True, "synth.ecp5"),
                                    ("ecp5", False, "synth.ecp5.int8"),
                                    ("ice40", False, "synth.ice40")):
            workdir = Path(tmp) / f"{family}_{int(fp8)}"
            workdir.mkdir()
            verilog = workdir / "array4x4.v"
            verilog.write_text(component_to_verilog(SystolicArray(rows=4, cols=4, fp8=fp8), "array4x4"))
            cells = synthesize(verilog, "array4x4", family, workdir=workdir)
            results[f"{prefix}.{'mult18' if family == 'ecp5' else 'dsp'}"] = cells["dsp"]
            results[f"{prefix}.lut4"] = cells["lut"]
            results[f"{prefix}.ff"] = cells["ff"]


def bench_softmax(results):
    from sim.softmax_metrics import bench_softmax as run
    run(results)


def bench_layernorm(results):
    from sim.layernorm_metrics import bench_layernorm as run
    run(results)


def bench_scheduler(results):
    """Batching on vs off with the engine cost model of sim/golden/scheduler.py; plot."""
    from sim.golden.scheduler import bench_scheduler as run
    run(results, Path("build/bench/scheduler.png"))


def bench_core(results):
    from sim.core_bench import bench_core as run
    run(results)


def bench_minilm_accuracy(results):
    """Golden INT8 / E4M3 programs vs the float64 reference on the 61 test sentences."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("minilm_accuracy",
                                                  Path(__file__).with_name("minilm_accuracy.py"))
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    out = Path("build/bench/minilm_accuracy.json")
    accuracy.main(["--out", str(out)])
    results.update(json.loads(out.read_text()))


def _minilm_on_core(dtype, core, sentences):
    """``sentences`` embedded by the ``dtype`` program on the ``core`` preset's RTL through the
    hardware scheduler: (the stats dict, simulation seconds, 1 if the embeddings equal the
    golden program's bit for bit, else 0)."""
    from jalapeno.minilm.quantize import load_or_build
    from jalapeno.minilm.service import embed_sentences, open_simulator
    from jalapeno.minilm.tokenizer import encode
    from sim.golden.minilm_quantized import embed

    model = load_or_build(dtype)
    transport, accelerator = open_simulator(core, progress=print)
    start = time.monotonic()
    with transport:
        embeddings, stats = embed_sentences(accelerator, model, sentences)
    seconds = time.monotonic() - start
    golden = embed(model, encode(sentences))
    return stats.as_dict(), seconds, int(np.array_equal(embeddings, golden))


def bench_minilm_device(results):
    """all-MiniLM-L6-v2 on the 16 x 16 INT8 core's RTL (the `make demo` sentences, batched by the
    hardware scheduler): utilization from the cycle counters, bit-exact with the golden."""
    from scripts.demo import SENTENCES

    s, seconds, equal = _minilm_on_core("int8", "int8", SENTENCES)
    results.update({
        "minilm.utilization": s["mac_utilization"],
        "minilm.array_busy": s["array_busy"],
        "minilm.cycles": s["cycles"],
        "minilm.cycles_per_sentence": s["cycles_per_sentence"],
        "minilm.tokens": s["tokens"],
        "minilm.batches": s["batches"],
        "minilm.device_equals_golden": equal,
        "minilm.sim_seconds": round(seconds, 1),
        "minilm.sim_cycles_per_second": round(s["cycles"] / seconds),
    })


def bench_minilm_e4m3_device(results):
    """The FP8 (E4M3) program on the 16 x 16 core with the FP8 modes (the `full` preset; the
    `make demo` sentences): CONVERT post ops after every FP8 GEMM, bit-exact with the golden."""
    from scripts.demo import SENTENCES

    s, _, equal = _minilm_on_core("e4m3", "full", SENTENCES)
    results.update({
        "minilm.e4m3.utilization": s["mac_utilization"],
        "minilm.e4m3.cycles": s["cycles"],
        "minilm.e4m3.device_equals_golden": equal,
    })


def bench_minilm_serving(results):
    """all-MiniLM-L6-v2 under load: the first 32 test sentences submitted at once (the
    scheduler's queue depth) to the 16 x 16 core's RTL, batched by the hardware scheduler
    into batches of up to 256 tokens: utilization with batching (the demo's 6 sentences
    make one small batch)."""
    from jalapeno.minilm import eval_sentences

    sentences = eval_sentences()[:32]
    s, _, equal = _minilm_on_core("int8", "int8", sentences)
    results.update({
        "minilm.served.sentences": len(sentences),
        "minilm.served.tokens": s["tokens"],
        "minilm.served.batches": s["batches"],
        "minilm.served.utilization": s["mac_utilization"],
        "minilm.served.cycles_per_sentence": s["cycles_per_sentence"],
        "minilm.served.device_equals_golden": equal,
    })


def bench_fpga(results):
    """Bitstreams of both boards (place and route: the longest bench, tens of minutes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fpga_bench import bench_fpga as run
    run(results, progress=print)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="build/bench/results.json")
    parser.add_argument("--only", nargs="+", metavar="BENCH",
                        help="run only these benches (names without bench_)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    benches = (bench_unit_latency, bench_pysim_speed, bench_verilator_speed,
               bench_synthesis, bench_softmax, bench_layernorm, bench_scheduler, bench_matmul,
               bench_core, bench_minilm_accuracy, bench_minilm_device, bench_minilm_serving,
               bench_minilm_e4m3_device,
               bench_fpga)
    if args.only:
        known = {b.__name__.removeprefix("bench_"): b for b in benches}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"unknown bench(es) {unknown}; known: {sorted(known)}")
        benches = [known[name] for name in args.only]
    for bench in benches:
        print(f"-- {bench.__name__}", flush=True)
        bench(results)
    out.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    width = max(map(len, results))
    for name, value in sorted(results.items()):
        print(f"{name:<{width}}  {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
