"""all-MiniLM-L6-v2 on the RTL: the quantized program run on the core (4 x 4 Verilator model)
equals the golden interpreter bit for bit, batched over several sentences; ``jalapeno embed``
rejects bad input with one line and exit status 2."""

import dataclasses
import types

import numpy as np
import pytest

from jalapeno.accelerator import Accelerator
from jalapeno.cli import main as cli_main
from jalapeno.minilm.executor import ProgramExecutor
from jalapeno.minilm.quantize import load_or_build
from jalapeno.minilm.tokenizer import encode
from jalapeno.sim_transport import SimTransport
from sim.core_model import PRESETS
from sim.golden import minilm_quantized as mq


pytestmark = pytest.mark.cocotb

SENTENCES = ["Yes.", "How old are you?", "A man is eating food."]


@pytest.fixture(scope="module")
def model():
    return load_or_build("int8")


@pytest.fixture(scope="module")
def accelerator():
    with SimTransport(PRESETS["small"]) as transport:
        yield Accelerator(transport)


def _golden_layer_trace(model, ids, layers):
    """Golden tensors of the ops of layers < ``layers``, one sequence."""
    ops = tuple(op for op in model.program
                if getattr(op, "layer", -1) < layers and not isinstance(op, mq.HostPool))
    truncated = dataclasses.replace(model, program=ops)
    trace = {}
    mq.run_tokens(truncated, ids, trace=trace)
    return trace


def test_first_layer_batched_equals_golden(accelerator, model):
    ids = encode(SENTENCES)
    trace = {}
    executor = ProgramExecutor(accelerator, model)
    result, stats = executor.run(ids, trace=trace, layers=1)
    assert result is None
    goldens = [_golden_layer_trace(model, i, 1) for i in ids]
    compared = 0
    for name, value in trace.items():
        expected = np.concatenate([g[name] for g in goldens])
        assert value.shape == expected.shape, name
        mismatches = int(np.count_nonzero(value != expected))
        assert mismatches == 0, f"{name}: {mismatches} mismatches"
        compared += 1
    # every op of the layer was checked: embedding, both LayerNorm copies, QKV, context,
    # the residual requantizers, GELU, the FFN (every MatMul runs fused with its
    # requantization, INT16 and residual add included: no INT32 output is formed)
    required = ("e16", "x_mm", "x_res", "qkv", "ctx", "r1", "h_mm", "h_res", "u", "g", "r2")
    for name in required:
        assert name in trace, name
    assert not {"qkv_acc", "u_acc", "r1_acc", "r2_acc"} & set(trace)
    assert compared == len(trace) >= len(required)
    assert stats.by_op.get("MatMul+Requantize", 0) > 0
    assert stats.rows == sum(len(i) for i in ids) and stats.sequences == 3
    assert stats.cycles > 0 and 0 < stats.mac_utilization <= 1


def test_requantizations_are_fused_in_every_layer(accelerator, model):
    # Every layer reuses the tensor names (qkv_acc, u_acc, ...): fusing must look at liveness
    # up to the next write, not at any later op with the same input name.
    steps = ProgramExecutor(accelerator, model)._ops(None)
    fused = [s for s in steps if type(s).__name__ == "_Linear"]
    layers = {op.layer for op in model.program if getattr(op, "layer", -1) >= 0}
    assert sorted((s.layer, s.requantize.out) for s in fused) == sorted(
        (layer, out) for layer in layers for out in ("qkv", "u", "r1", "r2"))
    assert not any(isinstance(s, (mq.MatMul, mq.Requantize)) for s in steps)


def test_e4m3_first_layer_batched_equals_golden(accelerator):
    """The FP8 program's layer 0 on the core (CONVERT post ops, bias rows through ONES, the
    FP8 attention chain): every tensor equals the golden interpreter's. The FFN down GEMM
    (pairs of E4M3 operands, bias, [CLS] indicator and residual passes: K = 5,384) needs
    5,384 WGT words per output tile: more than half of the small core's 8,192 (so its blocks
    use the whole buffer), more than a 4,096-word WGT holds."""
    model = load_or_build("e4m3")
    ids = encode(SENTENCES[:2])         # two sentences batched: the attention per sentence
    trace = {}
    _, stats = ProgramExecutor(accelerator, model).run(ids, trace=trace, layers=1)
    goldens = [_golden_layer_trace(model, i, 1) for i in ids]
    for name, value in trace.items():
        expected = np.concatenate([g[name] for g in goldens])
        mismatches = int(np.count_nonzero(value.astype(np.int64) != expected.astype(np.int64)))
        assert mismatches == 0, f"{name}: {mismatches} mismatches"
    # the FP32 sums and the attention intermediates stay on the core
    for name in ("x", "x_e", "x_hi", "x_lo", "qkv", "ctx", "r1", "h", "u", "g", "r2"):
        assert name in trace, name
    assert not {"qkv_acc", "r1_acc", "u_acc", "r2_acc"} & set(trace)
    assert stats.by_op.get("MatMul+Convert", 0) > 0 and stats.by_op.get("Attention", 0) > 0


def test_e4m3_program_needs_the_fp8_modes():
    fake = mq.QuantizedMiniLM(dtype="e4m3", program=(), params={})
    core = types.SimpleNamespace(fp8=False, requantizer=True)
    with pytest.raises(ValueError, match="FP8 modes"):
        ProgramExecutor(core, fake)


def test_empty_batch_is_an_error(accelerator, model):
    with pytest.raises(ValueError, match="empty"):
        ProgramExecutor(accelerator, model).run([])


@pytest.mark.parametrize("argv, message", [
    (["embed"], "at least one SENTENCE"),
    (["embed", "  "], "empty"),
    (["embed", "--dtype", "e4m3", "--core", "int8", "Hello."], "FP8 modes"),
    (["embed", "--target", "ulx3s", "Hello."], "only the simulated core"),
])
def test_embed_command_rejects_bad_input(capsys, argv, message):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_served_sentences_come_back_by_id_and_exact(accelerator, model):
    """embed_sentences: one request per sentence through the hardware scheduler, which forms
    several batches; each result equals the golden program's for that sentence. (A one-layer
    program, pooled over layer 0's output, keeps the test short.)"""
    from jalapeno.minilm.service import embed_sentences

    ops = [op for op in model.program if getattr(op, "layer", -1) < 1
           and not isinstance(op, mq.HostPool)]
    one_layer = dataclasses.replace(model, program=(*ops, mq.HostPool("x_res", "out")))
    sentences = ["Yes.", "No way!", "How old are you?", "Good morning.", "A cat."]
    embeddings, stats = embed_sentences(accelerator, one_layer, sentences, max_batch_rows=12)
    golden = mq.embed(one_layer, encode(sentences))
    assert np.array_equal(embeddings, golden)
    s = stats.as_dict()
    assert s["sentences"] == len(sentences) and sum(s["sentences_per_batch"]) == len(sentences)
    assert s["tokens"] == sum(len(i) for i in encode(sentences)) == sum(s["rows_per_batch"])
    assert s["batches"] >= 2 and max(s["rows_per_batch"]) <= 12
    assert s["cycles"] > 0 and 0 < s["mac_utilization"] <= 1
