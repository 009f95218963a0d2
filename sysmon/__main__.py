"""``python -m sysmon``."""

import sys

from sysmon.cli import main

sys.exit(main())
