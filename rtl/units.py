"""The top-level units: each is exported by `make verilog`, linted and benchmarked.

Maps a unit's name (its Verilog module and file name) to a function that builds
it with its default parameters. A new unit adds one line here.
"""

from functools import partial

from .matmul.engine import MatmulEngine
from .numerics.fp8_decoder import FP8Decoder
from .numerics.fp8_encoder import FP8Encoder
from .numerics.fp8_multiplier import FP8Multiplier
from .numerics.fp32_converter import FP32Converter
from .activation import Activation
from .layernorm import LayerNorm
from .numerics.requantizer import Requantizer
from .scheduler import Scheduler
from .softmax import Softmax


__all__ = ["UNITS"]


UNITS = {
    "fp8_decoder": FP8Decoder,
    "fp8_encoder": FP8Encoder,
    "fp8_multiplier": FP8Multiplier,
    "fp32_converter": FP32Converter,  # FP32 x 2**k to E4M3 / INT8 / INT16 (the CONVERT post op)
    "requantizer": Requantizer,
    "requantizer_ext": partial(Requantizer, extended=True),  # + INT16 output and residual term
    "softmax": Softmax,              # rows up to 512, one lane
    "layernorm": LayerNorm,          # LayerNorm / RMSNorm, hidden size up to 1024, one lane
    "activation": Activation,        # 256-entry INT8 table (GELU, SiLU, ...), one lane
    "scheduler": Scheduler,          # dynamic batching: 64-request queue, 4 batches in flight
    # 16 x 16, INT8/UINT8/FP8, 512 accumulator rows; the PE is one shared Verilog module.
    "matmul_engine": partial(MatmulEngine, shared_pe_module=True),
}
