"""Everything between a qube and the collector: qrexec calls, discovery, parsing."""
