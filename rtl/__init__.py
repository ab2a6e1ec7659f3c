"""Jalapeño gateware: Amaranth components only (everything that becomes hardware)."""
