"""Configuration: bundled defaults, overridden by vdc-lake.toml or --config, overridden by CLI options.

Every option has exactly one default, in defaults.toml. `Config.get(section, key, cli_value)`
applies the precedence CLI > config file > bundled default, and `Config.describe()` tells
where each effective value came from (`vdc-lake config show`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vdc_lake.errors import ConfigError

LOCAL_CONFIG_NAME = "vdc-lake.toml"


def bundled_defaults() -> dict[str, dict[str, Any]]:
    text = resources.files("vdc_lake").joinpath("defaults.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; every way it can fail is one ConfigError naming `what` and the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8 TOML") from e


@dataclass
class Config:
    """Effective configuration: values[section][key] plus the source of each value."""

    values: dict[str, dict[str, Any]]
    sources: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def bundled(cls) -> Config:
        """The bundled defaults alone (no vdc-lake.toml, no --config)."""
        values = bundled_defaults()
        return cls(values, {(s, k): "default" for s, sec in values.items() for k in sec})

    @classmethod
    def load(cls, config_file: Path | None = None, *, search_dir: Path | None = None) -> Config:
        """Bundled defaults, then `search_dir/vdc-lake.toml` if present, then `config_file`."""
        config = cls.bundled()
        local = Path(search_dir or Path.cwd()) / LOCAL_CONFIG_NAME
        if local.is_file():
            config.overlay(read_toml(local), str(local))
        if config_file is not None:
            config.overlay(read_toml(Path(config_file)), str(config_file))
        from vdc_lake.config.rules import check_config

        check_config(config.describe())  # each value by its rule, naming the file and key
        return config

    def overlay(self, data: dict[str, Any], source: str) -> None:
        """Apply overrides from one file; unknown sections or keys are errors (typos matter)."""
        for section, entries in data.items():
            if section in self.values and not isinstance(entries, dict):
                raise ConfigError(f"{source}: [{section}] must be a table of options, not {entries!r}")
            if section not in self.values:
                known = ", ".join(sorted(self.values))
                raise ConfigError(f"{source}: unknown section [{section}]; known sections: {known}")
            for key, value in entries.items():
                if key not in self.values[section]:
                    known = ", ".join(sorted(self.values[section]))
                    raise ConfigError(f"{source}: unknown key {key!r} in [{section}]; known keys: {known}")
                self.values[section][key] = value
                self.sources[(section, key)] = source

    def get(self, section: str, key: str, cli_value: Any = None) -> Any:
        """The effective value: the CLI value when given (not None), else the configured one."""
        if cli_value is not None and cli_value != ():
            return cli_value
        return self.values[section][key]

    def section(self, section: str, **cli_values: Any) -> dict[str, Any]:
        """A whole section with CLI values (None = not given) applied on top."""
        merged = dict(self.values[section])
        for key, value in cli_values.items():
            if key not in merged:
                raise ConfigError(f"unknown option {key!r} for [{section}]")
            if value is not None and value != ():
                merged[key] = value
        return merged

    def describe(self) -> list[tuple[str, str, Any, str]]:
        """Rows of (section, key, value, source) for display."""
        return [
            (section, key, value, self.sources.get((section, key), "default"))
            for section, entries in self.values.items()
            for key, value in entries.items()
        ]
