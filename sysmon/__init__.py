"""sysmon: append-only metrics for every qube of a Qubes OS system."""

__version__ = "0.2.0"
