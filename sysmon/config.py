"""Configuration: a TOML file, every key optional, seed 002's defaults.

An unknown key or a bad value is a :class:`ConfigError` naming the key and
the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from sysmon.protocol.names import is_valid_qube_name
from sysmon.transform.rules import Rule, RuleError, parse_rules

DEFAULT_CONFIG_PATH = Path("/etc/sysmon/sysmon.toml")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class ConfigError(Exception):
    """The configuration is not usable; the message names the key and file."""


@attrs.frozen
class Config:
    """Everything the collector can be told."""

    out_dir: Path = attrs.field(factory=lambda: Path("~/Monitor").expanduser())
    interval: float = 10.0
    scrape_timeout: float = 8.0
    concurrency: int = 16
    exclude: tuple[str, ...] = ()
    self_name: str | None = None
    vault: str = "secrets-vault"
    archive_at: str = "03:50"
    retention_days: int = 14
    min_free_mb: int = 200
    rules: tuple[Rule, ...] = ()


def _number(key: str, value: Any, source: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}: {key} must be a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{source}: {key} must be a whole number")
    if value <= 0:
        raise ConfigError(f"{source}: {key} must be above 0")
    return value


def _qube_name(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str) or not is_valid_qube_name(value):
        raise ConfigError(f"{source}: {key} must be a qube name, got {value!r}")
    return value


def config_from_mapping(data: dict[str, Any], source: str) -> Config:
    """Validate ``data`` (a parsed TOML table) into a Config."""
    fields = {f.name for f in attrs.fields(Config)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "out_dir":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: out_dir must be a path")
            values[key] = Path(value).expanduser()
        elif key in {"interval", "scrape_timeout"}:
            values[key] = float(_number(key, value, source))
        elif key in {"concurrency", "retention_days", "min_free_mb"}:
            values[key] = int(_number(key, value, source, integer=True))
        elif key == "exclude":
            if not isinstance(value, list):
                raise ConfigError(f"{source}: exclude must be a list of qube names")
            values[key] = tuple(_qube_name(key, v, source) for v in value)
        elif key in {"self_name", "vault"}:
            values[key] = _qube_name(key, value, source)
        elif key == "rules":
            try:
                values[key] = parse_rules(value, source)
            except RuleError as exc:
                raise ConfigError(str(exc)) from None
        elif key == "archive_at":
            if not isinstance(value, str) or not _HHMM_RE.fullmatch(value):
                raise ConfigError(f"{source}: archive_at must be HH:MM, got {value!r}")
            values[key] = value
    config = Config(**values)
    if config.scrape_timeout >= config.interval:
        raise ConfigError(
            f"{source}: scrape_timeout ({config.scrape_timeout:g}) must be below "
            f"interval ({config.interval:g})"
        )
    return config


def load_config(path: Path | None) -> Config:
    """Read ``path``; None reads the default path if it exists, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_mapping(data, str(path))
