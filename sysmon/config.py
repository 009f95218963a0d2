"""Configuration: a TOML file, every key optional, seed 002's defaults.

:class:`Config` validates itself: every way one is made -- from the file,
from command-line flags, with ``attrs.evolve`` -- rejects a bad value with a
:class:`ConfigError` naming the key (and the file, when it came from one).
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from sysmon.protocol.names import is_valid_qube_name
from sysmon.records import Budget
from sysmon.transform.rules import Rule, RuleError, parse_rules
from sysmon.transform.views import ViewsLimits

DEFAULT_CONFIG_PATH = Path("/etc/sysmon/sysmon.toml")
#: The handler's MAX_ALERTS: alert lines one poll can carry.
MAX_ALERTS_PER_POLL = 50
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


#: A configuration is a few kB: past this it is not one, and is not read.
MAX_CONFIG_BYTES = 1024 * 1024

#: An integer setting's bits: past about 1,024 no float holds it (the
#: checks compare with floats), and no setting needs a tenth of them.
_MAX_BITS = 128


class ConfigError(Exception):
    """The configuration is not usable; the message names the key and file."""


def _positive(*, integer: bool = False) -> Validator:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{attribute.name} must be a number, got {value!r}")
        if integer and not isinstance(value, int):
            raise ConfigError(f"{attribute.name} must be a whole number, got {value!r}")
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{attribute.name} must be above 0, got {value!r}")

    return check


def _qube_name(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not is_valid_qube_name(value):
        raise ConfigError(f"{attribute.name} must be a qube name, got {value!r}")


def _optional_qube_name(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _qube_name(instance, attribute, value)


def _qube_names(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for name in value:
        _qube_name(instance, attribute, name)


def _names_tuple(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"exclude must be a list of qube names, got {value!r}")
    return tuple(value)


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"out_dir must be a path, got {value!r}")
    if "\0" in value:  # TOML's \u0000: no system call takes it
        raise ConfigError(f"out_dir must be a path without a NUL byte, got {value!r}")
    return Path(value).expanduser()


#: A host_name: a short label safe in every engine's label or tag.
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _host_name(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not (value == "" or _HOST_NAME_RE.fullmatch(value)):
        raise ConfigError(
            f"{attribute.name} must be letters, digits, '_', '.', '-' (64 at most), got {value!r}"
        )


def _hhmm(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _HHMM_RE.fullmatch(value):
        raise ConfigError(f"{attribute.name} must be HH:MM, got {value!r}")


def _rules(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(r, Rule) for r in value):
        raise ConfigError(f"{attribute.name} must be a tuple of rules")


@attrs.frozen
class Config:
    """Everything the collector can be told, checked on construction."""

    out_dir: Path = attrs.field(factory=lambda: Path("~/Monitor").expanduser(), converter=_path)
    interval: float = attrs.field(default=10.0, validator=_positive())
    scrape_timeout: float = attrs.field(default=8.0, validator=_positive())
    concurrency: int = attrs.field(default=16, validator=_positive(integer=True))
    exclude: tuple[str, ...] = attrs.field(
        default=(), converter=_names_tuple, validator=_qube_names
    )
    self_name: str | None = attrs.field(default=None, validator=_optional_qube_name)
    vault: str = attrs.field(default="secrets-vault", validator=_qube_name)
    archive_at: str = attrs.field(default="03:50", validator=_hhmm)
    retention_days: int = attrs.field(default=14, validator=_positive(integer=True))
    min_free_mb: int = attrs.field(default=200, validator=_positive(integer=True))
    #: Polls between the slow parts of a poll: disk lines (df) and journal
    #: alerts (journalctl), each a process in the qube; the rest is /proc only.
    #: Once a minute at 10 s: journalctl's start-up alone costs more than a
    #: node_exporter scrape, so every 30 s it was most of a poll's average
    #: (docs/performance.md).  Alerts keep their own time, only filed later.
    disk_every: int = attrs.field(default=6, validator=_positive(integer=True))
    alerts_every: int = attrs.field(default=6, validator=_positive(integer=True))
    #: The day folders and archives together never take more (oldest
    #: delivered days go first); sized below the private volume Salt gives.
    max_data_mb: int = attrs.field(default=8192, validator=_positive(integer=True))
    #: Each qube's share of the disk per UTC day, and of distinct names.
    qube_mb_per_day: int = attrs.field(default=16, validator=_positive(integer=True))
    qube_names_per_day: int = attrs.field(default=256, validator=_positive(integer=True))
    #: The journal alerts' share of a qube's day, in percent: a user inside
    #: a qube filling the journal (``logger -p crit``) cannot starve its
    #: metric rows, which keep the rest.  A normal qube's alerts are under
    #: 1% of its rows; a flood at the handler's caps (50 x 1,000 B a
    #: minute) fills 25% of 16 MiB in under 1.5 h.
    alerts_percent: int = attrs.field(default=25, validator=_positive(integer=True))
    #: All disposables together, per UTC day (each a new name that would
    #: otherwise bring a fresh budget): 2x one qube's 16 MiB, 6 disposables
    #: running all day at a normal qube's 5.4 MB.
    dispvm_mb_per_day: int = attrs.field(default=32, validator=_positive(integer=True))
    #: All qube names first seen today together (other than disposables).
    new_qubes_mb_per_day: int = attrs.field(default=32, validator=_positive(integer=True))
    #: Digests an alert cursor keeps of the entries filed at its microsecond
    #: (19 B each in the state file; above the handler's 50 lines a poll).
    cursor_seen: int = attrs.field(default=64, validator=_positive(integer=True))
    #: A readable name for this machine, beside its random identity: the
    #: export's ``host_name`` label ("": none, the labels as before).
    host_name: str = attrs.field(default="", validator=_host_name)
    rules: tuple[Rule, ...] = attrs.field(default=(), validator=_rules)
    #: Desktop notifications of rules with ``notify = true``: at most one per
    #: rule and qube every notify_every seconds, notify_burst in all in that
    #: time (then one summary of what was held back), and notify-send given
    #: notify_timeout seconds before it is abandoned.
    notify_every: float = attrs.field(default=300.0, validator=_positive())
    notify_burst: int = attrs.field(default=5, validator=_positive(integer=True))
    notify_timeout: float = attrs.field(default=5.0, validator=_positive())
    #: When a qube's own view and Xen's or its netvm's disagree (docs/views.md
    #: has the honest gaps these were set from): CPU points Xen may see over
    #: the qube's own figure; Xen's CPU above which a qube that does not
    #: answer is "busy but silent"; memory's gap in percent of Xen's; a
    #: tick's traffic gap, in kB plus percent of the larger figure; and how
    #: long a gap lasts before it is told (and an agreement before its end is).
    views_cpu_gap: float = attrs.field(default=30.0, validator=_positive())
    views_busy: float = attrs.field(default=50.0, validator=_positive())
    views_mem_gap_percent: float = attrs.field(default=25.0, validator=_positive())
    views_traffic_gap_kb: int = attrs.field(default=1024, validator=_positive(integer=True))
    views_traffic_gap_percent: float = attrs.field(default=50.0, validator=_positive())
    views_sustain: float = attrs.field(default=120.0, validator=_positive())

    @property
    def views_limits(self) -> ViewsLimits:
        """The views' thresholds, as the transform takes them."""
        return ViewsLimits(
            cpu_gap=self.views_cpu_gap,
            busy=self.views_busy,
            mem_gap_percent=self.views_mem_gap_percent,
            traffic_gap_kb=self.views_traffic_gap_kb,
            traffic_gap_percent=self.views_traffic_gap_percent,
            sustain=self.views_sustain,
        )

    @property
    def budget(self) -> Budget:
        """Each qube's share of the day, as the transform takes it."""
        mib = 1024 * 1024
        return Budget(
            bytes_per_day=self.qube_mb_per_day * mib,
            names_per_day=self.qube_names_per_day,
            cursor_seen=self.cursor_seen,
            alert_percent=self.alerts_percent,
            dispvm_bytes_per_day=self.dispvm_mb_per_day * mib,
            new_bytes_per_day=self.new_qubes_mb_per_day * mib,
        )

    def __attrs_post_init__(self) -> None:
        if self.alerts_percent > 100:
            raise ConfigError(f"alerts_percent must be 100 or less, got {self.alerts_percent}")
        if self.cursor_seen < MAX_ALERTS_PER_POLL:
            raise ConfigError(
                f"cursor_seen must be at least {MAX_ALERTS_PER_POLL} (the handler's alert "
                f"lines a poll), got {self.cursor_seen}"
            )
        for key in ("views_cpu_gap", "views_busy", "views_mem_gap_percent"):
            if getattr(self, key) > 100:
                raise ConfigError(f"{key} must be 100 or less, got {getattr(self, key)}")
        if self.scrape_timeout >= self.interval:
            raise ConfigError(
                f"scrape_timeout ({self.scrape_timeout:g}) must be below "
                f"interval ({self.interval:g})"
            )


_VIEWS_FLOATS = (
    "views_cpu_gap",
    "views_busy",
    "views_mem_gap_percent",
    "views_traffic_gap_percent",
    "views_sustain",
)


def config_from_mapping(data: dict[str, Any], source: str) -> Config:
    """``data`` (a parsed TOML table) as a Config; errors name ``source``."""
    known = {f.name for f in attrs.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    values = dict(data)
    for key, value in values.items():
        if isinstance(value, int) and value.bit_length() > _MAX_BITS:
            raise ConfigError(f"{source}: {key} is too large")  # no float holds it
    try:
        if "rules" in values:
            values["rules"] = parse_rules(values["rules"], source)
        numbers = {"interval", "scrape_timeout", *_VIEWS_FLOATS} & set(values)
        for key in numbers:  # TOML writes 10 for 10.0
            if isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        return Config(**values)
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: Path | None) -> Config:
    """Read ``path``; None reads the default path if it exists, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(_read(path).decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # and an integer of 4,300 digits
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_mapping(data, str(path))


def _read(path: Path) -> bytes:
    """``path``'s bytes if it is a regular file of :data:`MAX_CONFIG_BYTES` at most."""
    # O_NONBLOCK: a FIFO with no writer is refused below, not waited on in open(2).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file ({_kind(info.st_mode)})")
        if info.st_size > MAX_CONFIG_BYTES:
            raise _too_big(path, info.st_size)
        data = b""
        while len(data) <= MAX_CONFIG_BYTES and (
            chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))
        ):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # it grew since fstat
        raise _too_big(path, len(data))
    return data


def _too_big(path: Path, size: int) -> ConfigError:
    return ConfigError(f"{path}: over 1 MiB ({size:,} bytes), not a configuration")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a file"
