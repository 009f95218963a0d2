#!/bin/sh
# sysmon command line, installed as /usr/bin/sysmon by Salt: the package
# lives in /usr/lib/sysmon, outside Debian's dist-packages.
PYTHONPATH=/usr/lib/sysmon${PYTHONPATH:+:$PYTHONPATH} exec /usr/bin/python3 -m sysmon "$@"
