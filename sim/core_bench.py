"""Core benchmarks on the full (16 x 16) core model: MiniLM's FFN up-projection as a linear
layer, and one attention head (sequence 128, head size 32)."""

import time

import numpy as np

from .core_model import PRESETS
from .golden.matmul import matmul as golden_matmul
from .golden.requantizer import quantize_multipliers, requantize


__all__ = ["bench_core"]


def bench_core(results, progress=print):
    """``core.linear_utilization``: useful MACs / (cycles x 256) for M=128, K=384, N=1536 with
    the weights streamed from external memory through the port (32-cycle latency, a word
    per cycle), counted by the core's cycle counter; checked bit-exact against golden.
    ``core.sim_cycles_per_s``: the Verilator model's speed on that run (clock cycles
    simulated per wall-clock second, the host runtime included)."""
    from jalapeno.accelerator import Accelerator
    from jalapeno.sim_transport import SimTransport

    rng = np.random.default_rng(0)
    m, k, n = 128, 384, 1536
    x = rng.integers(0, 256, (m, k))
    w = rng.integers(0, 256, (k, n))
    bias = rng.integers(-5000, 5000, n)
    multiplier, shift = quantize_multipliers(rng.uniform(1e-5, 1e-3, n))
    with SimTransport(PRESETS["full"], progress=progress) as transport:
        accelerator = Accelerator(transport)
        start, start_cycles = time.monotonic(), transport.cycles
        got = accelerator.linear(x, w, bias=bias, multiplier=multiplier, shift=shift)
        seconds = time.monotonic() - start
        simulated = transport.cycles - start_cycles
        stats = accelerator.last_stats
    expected = requantize(golden_matmul(x, w, 0), bias[None, :], multiplier[None, :],
                          shift[None, :], 0)["value"]
    if not np.array_equal(got, expected.astype(np.int8)):
        raise AssertionError("core linear bench: the result differs from the golden model")
    results["core.linear_utilization"] = round(stats["mac_utilization"], 4)
    results["core.linear_cycles"] = stats["cycles"]
    results["core.linear_wait_load_cycles"] = stats["compute_wait_load"]
    # Simulation speed: clock cycles simulated per second of wall time, host runtime included.
    results["core.sim_cycles_per_s"] = round(simulated / seconds)

    # One attention head of MiniLM: sequence 128, head size 32, as one program.
    from .golden.attention import attention_head
    from .golden.requantizer import quantize_multiplier
    from .golden.softmax import exp_table
    t, d = 128, 32
    q, k, v = (rng.integers(-128, 128, (t, d)) for _ in range(3))
    score_m, score_s = quantize_multiplier(0.5 / (128 * np.sqrt(d)))
    out_m, out_s = quantize_multiplier(0.9 / 256)
    kwargs = dict(score_params=dict(bias=0, multiplier=score_m, shift=score_s),
                  softmax_table=exp_table(0.08), out_params=dict(bias=0, multiplier=out_m, shift=out_s))
    with SimTransport(PRESETS["full"], progress=progress) as transport:
        accelerator = Accelerator(transport)
        got = accelerator.attention_head(q, k, v, **kwargs)
        stats = accelerator.last_stats
    if not np.array_equal(got, attention_head(q, k, v, **kwargs)):
        raise AssertionError("core attention bench: the result differs from the golden model")
    results["core.attention_head_cycles"] = stats["cycles"]
    results["core.attention_head_mac_utilization"] = round(stats["mac_utilization"], 4)
