"""Instruction programs: build a list of instructions with explicit dependencies, then
turn the dependencies into the core's dependency tokens and encode.

The core runs load, compute and store instructions on three units concurrently; an
instruction that must wait for another unit's instruction pops a token that the
other instruction pushes when it finishes (``docs/core.md``). :class:`Program` lets
the compiler state *what* waits for *what* (``deps``) and derives the minimal set of
token flags: tokens between two units are counted in order, so the k-th pop is
satisfied by the k-th push, and a wait on an instruction that an earlier wait
already covers needs no token of its own.
"""

from dataclasses import dataclass, field

from rtl.isa import Opcode, encode


__all__ = ["Program", "UNIT_OF"]

UNIT_OF = {Opcode.LOAD: "load", Opcode.STORE: "store", Opcode.GEMM: "compute",
           Opcode.TABLE: "compute", Opcode.NOP: "compute", Opcode.SOFTMAX: "compute",
           Opcode.LAYERNORM: "compute", Opcode.ACTIVATION: "compute", Opcode.REQUANT: "compute"}
_ORDER = ("load", "compute", "store")


@dataclass
class _Step:
    opcode: Opcode
    fields: dict
    deps: list
    flags: dict = field(default_factory=dict)

    @property
    def unit(self):
        return UNIT_OF[self.opcode]


class Program:
    """A list of instructions; each ``add`` returns the instruction's index for ``deps``."""

    def __init__(self):
        self._steps = []

    def __len__(self):
        return len(self._steps)

    def add(self, opcode, deps=(), **fields):
        opcode = Opcode(opcode)
        if opcode not in UNIT_OF:
            raise ValueError(f"{opcode.name} is not an instruction a program can contain")
        deps = [d for d in deps if d is not None]
        for d in deps:
            if not 0 <= d < len(self._steps):
                raise ValueError(f"dependency {d} is not an earlier instruction")
            here, there = _ORDER.index(UNIT_OF[opcode]), _ORDER.index(self._steps[d].unit)
            if abs(here - there) > 1:
                raise ValueError(f"{opcode.name} cannot wait for {self._steps[d].opcode.name} "
                                 "directly: only neighbouring units exchange tokens")
        self._steps.append(_Step(opcode, dict(fields), deps))
        return len(self._steps) - 1

    def load(self, deps=(), **fields):
        return self.add(Opcode.LOAD, deps, **fields)

    def store(self, deps=(), **fields):
        return self.add(Opcode.STORE, deps, **fields)

    def gemm(self, deps=(), **fields):
        return self.add(Opcode.GEMM, deps, **fields)

    def table(self, deps=(), **fields):
        return self.add(Opcode.TABLE, deps, **fields)

    def _assign_tokens(self):
        for step in self._steps:
            step.flags = {}
        for consumer_unit in _ORDER:
            for producer_unit in _ORDER:
                if abs(_ORDER.index(consumer_unit) - _ORDER.index(producer_unit)) != 1:
                    continue
                producer_is_prev = _ORDER.index(producer_unit) < _ORDER.index(consumer_unit)
                waited = -1
                for step in self._steps:
                    if step.unit != consumer_unit:
                        continue
                    needed = max((d for d in step.deps if self._steps[d].unit == producer_unit),
                                 default=-1)
                    if needed > waited:
                        step.flags["pop_prev" if producer_is_prev else "pop_next"] = True
                        self._steps[needed].flags["push_next" if producer_is_prev else "push_prev"] = True
                        waited = needed

    def words(self):
        """The encoded instructions (256-bit integers), in order."""
        self._assign_tokens()
        return [encode(step.opcode, **step.flags, **step.fields) for step in self._steps]

    def to_bytes(self):
        return b"".join(word.to_bytes(32, "little") for word in self.words())
