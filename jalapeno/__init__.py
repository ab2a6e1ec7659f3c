"""Jalapeño host side: what drives the hardware, and the user's entry point (`jalapeno`)."""

__version__ = "0.1.0"
