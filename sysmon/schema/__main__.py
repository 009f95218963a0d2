"""``python -m sysmon.schema [series]``: print the docs' table of the columns (or series)."""

import sys

from sysmon.schema.table import column_table, series_table

if sys.argv[1:] not in ([], ["series"]):
    print(
        f"usage: python -m sysmon.schema [series]; got {' '.join(sys.argv[1:])!r}", file=sys.stderr
    )
    sys.exit(2)
if sys.stdout is None:  # started with fd 1 closed
    print("python -m sysmon.schema: stdout: closed", file=sys.stderr)
    sys.exit(1)
try:
    print(series_table() if sys.argv[1:] == ["series"] else column_table(), end="", flush=True)
except OSError as exc:  # a full disk, a closed pipe: said, not a traceback
    print(f"python -m sysmon.schema: stdout: {exc.strerror or exc}", file=sys.stderr)
    sys.exit(1)
