"""``python -m sysmon.schema``: print the docs' table of the daily files' columns."""

from sysmon.schema.table import column_table

print(column_table(), end="")
