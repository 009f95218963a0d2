"""What qubes and dom0 send, parsed: pure, sync, no trio and no files.

Imports nothing of sysmon outside this package.
"""
