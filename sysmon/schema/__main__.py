"""``python -m sysmon.schema [series]``: print the docs' table of the columns (or series)."""

import sys

from sysmon.schema.table import column_table, series_table

print(series_table() if sys.argv[1:] == ["series"] else column_table(), end="")
