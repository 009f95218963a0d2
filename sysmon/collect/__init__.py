"""Trio I/O toward the qubes and dom0; the only package that spawns processes."""
