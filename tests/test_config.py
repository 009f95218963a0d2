"""Configuration: every key optional, errors name the key and the file."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import attrs
import pytest
from conftest import run_sysmon

from sysmon.config import Config, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sysmon.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_seeds(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config == Config()
    assert (config.interval, config.vault, config.archive_at, config.retention_days) == (
        10.0,
        "secrets-vault",
        "03:50",
        14,
    )
    assert config.out_dir == Path("~/Monitor").expanduser()


def test_every_key(tmp_path):
    config = load_config(
        write(
            tmp_path,
            'out_dir = "/data"\ninterval = 5\nscrape_timeout = 4\nconcurrency = 8\n'
            'exclude = ["untrusted"]\nself_name = "mon"\nvault = "v"\narchive_at = "04:10"\n'
            "retention_days = 3\nmin_free_mb = 50\n",
        )
    )
    assert config.out_dir == Path("/data")
    assert config.exclude == ("untrusted",)
    assert config.min_free_mb == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ("interval = -1\n", "interval must be above 0"),
        ('interval = "10"\n', "interval must be a number"),
        ("concurrency = 1.5\n", "concurrency must be a whole number"),
        ('exclude = ["../x"]\n', "exclude must be a qube name"),
        ('archive_at = "25:00"\n', "archive_at must be HH:MM"),
        ("interval = 5\n", "scrape_timeout (8) must be below interval (5)"),
        ("interval = [\n", "not valid TOML"),
        # Integers no float holds (a pillar's typo through Salt): a line, not a traceback.
        ("interval = 1" + "0" * 400 + "\n", "interval is too large"),
        ("max_data_mb = 1" + "0" * 400 + "\n", "max_data_mb is too large"),
        ("views_traffic_gap_kb = 1" + "0" * 400 + "\n", "views_traffic_gap_kb is too large"),
        ("interval = 1" + "0" * 5000 + "\n", "not valid TOML"),
        # `run` and `archive` crashed on it (ValueError: embedded null byte in mkdir).
        ('out_dir = "/tmp/a\\u0000b"\n', "out_dir must be a path without a NUL byte"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.toml")


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """`--config` on a FIFO no one writes to waited for ever (open(2) waits for a writer)."""
    fifo = tmp_path / "sysmon.toml"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def load() -> None:
        try:
            outcome.append(load_config(fifo))
        except ConfigError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=30)
    waited = reader.is_alive()
    if waited:  # a writer that comes and goes gives it EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
    assert not waited, "it waited for a writer"
    assert isinstance(outcome[0], ConfigError), outcome
    assert str(outcome[0]) == f"{fifo}: not a regular file (a FIFO)"


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (Path("/dev/zero"), "a device"),  # read whole, it filled the memory
        (Path("/dev/null"), "a device"),
        (Path(__file__).parent, "a folder"),
    ],
)
def test_what_is_not_a_regular_file_is_refused(path: Path, kind: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: not a regular file ({kind})"


def test_a_config_over_1_mib_is_refused(tmp_path: Path) -> None:
    """A configuration is a few kB: one of 1 MiB is whole, past it refused unread."""
    path = write(tmp_path, "# " + "x" * (1024 * 1024 - 3) + "\n")
    assert load_config(path) == Config()
    path.write_text("# " + "x" * (1024 * 1024 - 2) + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: over 1 MiB (1,048,577 bytes), not a configuration"


class TestEveryConstructionPath:
    """The file, the command line and ``attrs.evolve`` all go through the validators."""

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"interval": 0}, "interval must be above 0, got 0"),
            ({"interval": math.inf}, "interval must be above 0, got inf"),
            ({"concurrency": 0}, "concurrency must be above 0"),
            ({"vault": "../etc"}, "vault must be a qube name"),
            ({"exclude": ("ok", "-rf")}, "exclude must be a qube name, got '-rf'"),
            ({"archive_at": "3:50"}, "archive_at must be HH:MM"),
            ({"scrape_timeout": 10.0}, "scrape_timeout (10) must be below interval (10)"),
            ({"out_dir": ""}, "out_dir must be a path"),
            ({"host_name": 'x",vm="y'}, "host_name must be letters, digits"),
        ],
    )
    def test_evolve_rejects_a_bad_value_naming_the_key(self, change, message):
        with pytest.raises(ConfigError) as error:
            attrs.evolve(Config(), **change)
        assert message in str(error.value)

    @pytest.mark.parametrize("command", ["run", "demo"])
    def test_interval_zero_on_the_command_line_exits_2(self, tmp_path, command):
        """`run --interval 0` crashed with ZeroDivisionError; `demo --interval 0` busy-looped."""
        done = run_sysmon(command, "--interval", "0", "--out-dir", tmp_path, timeout=30)
        assert done.returncode == 2, done.stderr
        assert "interval must be above 0" in done.stderr
        assert "Traceback" not in done.stderr


class TestShippedConfig:
    """config/sysmon.toml, installed as /etc/sysmon/sysmon.toml by the package."""

    SHIPPED = Path(__file__).resolve().parent.parent / "config" / "sysmon.toml"

    def commented(self) -> dict[str, str]:
        lines = self.SHIPPED.read_text().splitlines()
        found = {}
        for line in lines:
            if line.startswith("# ") and " = " in line and not line.startswith("# The"):
                key, _, value = line.removeprefix("# ").partition(" = ")
                found[key] = value.split("   #")[0].strip()
        return found

    def test_it_loads_as_the_defaults(self):
        """As shipped, every line a comment: the file means the defaults."""
        assert load_config(self.SHIPPED) == Config()

    def test_it_names_every_setting_with_its_default(self, tmp_path):
        """Each setting appears once, commented, with the value the code defaults to;
        uncommented one by one, each loads and changes nothing."""
        documented = self.commented()
        settings = {f.name for f in attrs.fields(Config)} - {"rules"}
        assert set(documented) == settings
        for key, value in documented.items():
            if key == "self_name":  # its default is qubesdb-read's answer, not a value
                continue
            loaded = load_config(write(tmp_path, f"{key} = {value}\n"))
            assert loaded == Config(), key
