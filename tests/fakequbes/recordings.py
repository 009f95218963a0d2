"""The recordings of the real Qubes code in ``tests/fixtures/qubes/``, loaded."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import attrs

RECORDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "qubes"

#: The recorded world: name -> (class, state).  4.3 names the template
#: debian-13-xfce, 4.2 debian-12-xfce.
WORLD: dict[str, tuple[str, str]] = {
    "dom0": ("AdminVM", "Running"),
    "default-dvm": ("AppVM", "Halted"),
    "disp1234": ("DispVM", "Running"),
    "nohandler": ("AppVM", "Running"),
    "personal": ("AppVM", "Paused"),
    "secrets-vault": ("AppVM", "Running"),
    "sys-dns": ("AppVM", "Running"),
    "sys-monitor": ("AppVM", "Running"),
    "work": ("AppVM", "Running"),
    "work-halted": ("AppVM", "Halted"),
}
TEMPLATE = {"4.2": "debian-12-xfce", "4.3": "debian-13-xfce"}


def world(release: str) -> dict[str, tuple[str, str]]:
    """The recorded world as dom0 of ``release`` listed it."""
    return {**WORLD, TEMPLATE[release]: ("TemplateVM", "Halted")}


def read(name: str) -> bytes:
    """A recorded file's exact bytes."""
    return (RECORDINGS / name).read_bytes()


@attrs.frozen
class Run:
    """One recorded run of a Qubes command."""

    argv: tuple[str, ...]
    case: str
    exit: int
    stdout: bytes
    stderr: bytes
    extra: dict[str, Any]


def runs(name: str) -> list[Run]:
    """The runs recorded in ``name`` (a JSON list)."""
    out = []
    for entry in json.loads((RECORDINGS / name).read_text()):
        fields = {"argv", "case", "exit", "stdout_b64", "stderr_b64"}
        out.append(
            Run(
                argv=tuple(entry["argv"]),
                case=entry["case"],
                exit=entry["exit"],
                stdout=base64.b64decode(entry["stdout_b64"]),
                stderr=base64.b64decode(entry["stderr_b64"]),
                extra={k: v for k, v in entry.items() if k not in fields},
            )
        )
    return out
