"""The daily files' contract, used both ways.

``files`` describes each daily file once (columns with their encoding, role,
unit and type); the writer, every reader, the export's families, the rules'
instances and the docs' column table all derive from it.  Pure.
"""

from sysmon.schema.decode import MAX_LINE, DecodedRow, Skipped, decode_untrusted
from sysmon.schema.files import (
    ALERTS,
    CONNECTIONS,
    DAILY_FILES,
    DISK,
    MAX_ROW_BYTES,
    MAX_TEXT_CHARS,
    NETWORK,
    QUBE_STATES,
    QUBES,
    SCHEMA_VERSION,
    SCRAPES,
    SYSTEM,
    VIEWS,
    XEN,
    Column,
    DailyFile,
    Role,
    Schema,
    by_name,
    format_ts,
    forwarded,
    parse_ts,
    readable_rows,
)

__all__ = [
    "ALERTS",
    "CONNECTIONS",
    "DAILY_FILES",
    "DISK",
    "MAX_LINE",
    "MAX_ROW_BYTES",
    "MAX_TEXT_CHARS",
    "NETWORK",
    "QUBES",
    "QUBE_STATES",
    "SCHEMA_VERSION",
    "SCRAPES",
    "SYSTEM",
    "VIEWS",
    "XEN",
    "Column",
    "DailyFile",
    "DecodedRow",
    "Role",
    "Schema",
    "Skipped",
    "by_name",
    "decode_untrusted",
    "format_ts",
    "forwarded",
    "parse_ts",
    "readable_rows",
]
