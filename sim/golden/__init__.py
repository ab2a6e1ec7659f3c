"""Bit-exact NumPy models of every unit, and the float references they are measured against.

These are the single source of truth for numerics: the RTL is checked against them
and the compiler quantizes with the same functions.
"""
