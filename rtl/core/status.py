"""Error codes, counters and the register map of the core (shared with the host runtime)."""

import enum


__all__ = ["ErrorCode", "Counter", "Register", "COUNTER_BASE"]


class ErrorCode(enum.IntEnum):
    """What the sticky error status says (register STATUS bits 7:4)."""
    NONE = 0
    UNKNOWN_OPCODE = 1     # an opcode the core does not implement (10..15)
    ADDRESS = 2            # an operand outside its buffer or outside external memory
    BAD_FIELD = 3          # a field out of its range (size 0 or too large, bad mode/bank/post op)
    TOKEN_OVERFLOW = 4     # a dependency token counter overflowed (more pushes than pops)
    ENGINE = 5             # the matmul engine flagged a result row


class Counter(enum.IntEnum):
    """Hardware performance counters, 32 bits each, free-running since reset."""
    CYCLES = 0              # cycles the core was busy (any instruction queued or running)
    MAC_CYCLES = 1          # cycles an A row entered the array (rows x cols MACs each)
    COMPUTE_BUSY = 2        # cycles the compute unit ran an instruction
    COMPUTE_WAIT_LOAD = 3   # compute blocked on a token from load (waiting on memory)
    COMPUTE_WAIT_STORE = 4  # compute blocked on a token from store (output buffer full)
    COMPUTE_WAIT_POST = 5   # array stopped by post-processing (requantize/write)
    COMPUTE_WAIT_HOST = 6   # busy cycles with no compute instruction queued (waiting on the host)
    LOAD_WAIT_MEMORY = 7    # load unit waiting for read data
    STORE_WAIT_MEMORY = 8   # store unit waiting on the write channel or its acks
    LOAD_WORDS = 9          # words read from external memory
    STORE_WORDS = 10        # words written to external memory
    INSTRUCTIONS = 11       # instructions retired
    SATURATIONS = 12        # requantized values that saturated
    SYNCS = 13              # SYNC instructions completed


class Register(enum.IntEnum):
    """Registers on the core's register port (32 bits each; SCHED_* configuration is writable)."""
    STATUS = 0        # bit 0 idle, bit 1 error, bits 7:4 ErrorCode, bit 8 blocked
    ERROR_UNIT = 1    # the unit that raised the error: 0 dispatcher, 1 load, 2 compute, 3 store
    LANES = 2         # array size N: rows = cols = lanes, word = lanes bytes
    CONFIG = 3        # bits: 0 FP8 modes, 1 vector units, 2 requantizer, 3 scheduler (built)
    INP_WORDS = 4
    WGT_WORDS = 5
    OUT_WORDS = 6
    MAX_ROWS = 7
    MAX_LENGTH = 8    # longest softmax row
    MAX_HIDDEN = 9    # longest LayerNorm row
    # The scheduler in front of the core: configuration (read and write) ...
    SCHED_MAX_BATCH_ROWS = 10
    SCHED_MAX_WAIT_CYCLES = 11
    SCHED_WORK_CONSERVING = 12
    SCHED_AGING_CYCLES = 13
    # ... and state (read only).
    SCHED_NOW = 40
    SCHED_ACCEPTED = 41
    SCHED_REJECTED = 42
    SCHED_TIMED_OUT = 43
    SCHED_BATCHES = 44
    SCHED_BATCHED_ROWS = 45
    SCHED_MAX_WAIT = 46
    SCHED_WAITING = 47
    SCHED_BAD_DONE = 48


#: Register index of counter 0 (counter i is register COUNTER_BASE + i).
COUNTER_BASE = 16
