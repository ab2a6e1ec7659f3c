"""The accelerator core: instruction dispatch, load/compute/store units, buffers, counters."""

from .core import Core
from .status import COUNTER_BASE, Counter, ErrorCode, Register

__all__ = ["Core", "Counter", "ErrorCode", "Register", "COUNTER_BASE"]
