"""File I/O under the out dir.

It is handed what to write, and never imports collect or transform.
"""
