"""Configuration (vdc_lake.config.loader): bundled defaults < ./vdc-lake.toml < --config < CLI options;
describe() names where each value came from; a file that cannot be used is one line naming the fix."""

from __future__ import annotations

import re

import pytest

from tests.conftest import cli_fails
from vdc_lake.config.loader import LOCAL_CONFIG_NAME, Config, bundled_defaults, read_toml
from vdc_lake.errors import ConfigError


def _sources(config: Config) -> dict[str, tuple[object, str]]:
    return {f"{section}.{key}": (value, source) for section, key, value, source in config.describe()}


def test_without_files_every_value_is_the_bundled_default(tmp_path):
    config = Config.load(search_dir=tmp_path)
    assert config.values == bundled_defaults()
    assert config.values == Config.bundled().values
    described = config.describe()
    assert len(described) == sum(len(entries) for entries in bundled_defaults().values())
    assert {source for _, _, _, source in described} == {"default"}
    assert config.get("sanitize", "min_width") == 80


def test_precedence_default_then_local_file_then_config_file_then_cli(tmp_path):
    local = tmp_path / LOCAL_CONFIG_NAME
    local.write_text("[sanitize]\nmin_width = 200\nmax_height = 1000\n\n[dedup]\nneighbors = 8\n")
    given = tmp_path / "given.toml"
    given.write_text("[sanitize]\nmin_width = 300\n")

    config = Config.load(given, search_dir=tmp_path)
    sources = _sources(config)
    assert sources["sanitize.min_width"] == (300, str(given))  # --config beats ./vdc-lake.toml
    assert sources["sanitize.max_height"] == (1000, str(local))
    assert sources["dedup.neighbors"] == (8, str(local))
    assert sources["sanitize.min_height"] == (80, "default")

    assert config.get("sanitize", "min_width", 500) == 500  # a CLI value beats every file
    assert config.get("sanitize", "min_width", None) == 300  # an option not given
    assert config.get("scan", "extensions", ()) == config.values["scan"]["extensions"]  # an empty multiple option
    section = config.section("sanitize", min_width=None, max_height=2000)
    assert (section["min_width"], section["max_height"], section["min_height"]) == (300, 2000, 80)
    assert config.values["sanitize"]["max_height"] == 1000  # section() changes no stored value

    only_local = Config.load(search_dir=tmp_path)
    assert _sources(only_local)["sanitize.min_width"] == (200, str(local))
    assert Config.load(search_dir=tmp_path / "elsewhere").values == bundled_defaults()


def test_a_cli_option_that_the_section_does_not_have_is_an_error():
    with pytest.raises(ConfigError, match=r"^unknown option 'min_widht' for \[sanitize\]$"):
        Config.bundled().section("sanitize", min_widht=3)


@pytest.mark.parametrize("text, message", [
    ("[sanitize\n", r"^config file {path} is not valid TOML: "),
    ("[sanitize]\nmin_width = \n", r"^config file {path} is not valid TOML: "),
    ("[sanitise]\nmin_width = 300\n", r"^{path}: unknown section \[sanitise\]; known sections: .*\bsanitize\b"),
    ("[sanitize]\nmin_widht = 300\n", r"^{path}: unknown key 'min_widht' in \[sanitize\]; known keys: .*\bmin_width\b"),
    ("sanitize = 3\n", r"^{path}: \[sanitize\] must be a table of options, not 3$"),
])
def test_a_file_that_cannot_be_used_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Config.load(path, search_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert re.search(message.format(path=re.escape(str(path))), str(err.value)), err.value


def test_a_file_that_is_not_utf8_or_missing_names_the_file_and_the_fix(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[predict]\nmodels_dir = "caf\xe9"\n')
    with pytest.raises(ConfigError) as err:
        read_toml(latin)
    assert str(err.value) == (f"config file {latin} is not UTF-8 text (byte 0xe9 at offset 27); "
                              "save it as UTF-8 TOML")
    with pytest.raises(ConfigError) as err:
        read_toml(tmp_path / "absent.toml", "pipeline")
    assert str(err.value) == f"cannot read pipeline {tmp_path / 'absent.toml'}: No such file or directory"


def test_a_bad_local_file_is_refused_even_when_a_config_file_is_given(tmp_path):
    (tmp_path / LOCAL_CONFIG_NAME).write_text("[scan]\nworkers = -2\n")
    given = tmp_path / "given.toml"
    given.write_text("[sanitize]\nmin_width = 300\n")
    with pytest.raises(ConfigError, match=rf"^\[scan\] workers in .*{LOCAL_CONFIG_NAME} must be "):
        Config.load(given, search_dir=tmp_path)
    given.write_text("[scan]\nworkers = 2\n")  # the later file sets the value again: it is checked as set
    assert _sources(Config.load(given, search_dir=tmp_path))["scan.workers"] == (2, str(given))


# -- `vdc-lake config show`: the same through the CLI ----------------------------------------------

def _ok(result):
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


_fails = cli_fails


def _show(run_cli, config=None) -> dict[str, tuple[str, str]]:
    out = _ok(run_cli(["config", "show"], config=config))
    rows = {}
    for line in out.splitlines()[2:]:
        option, rest = line.split(None, 1)
        value, source = rest.rsplit(None, 1)
        rows[option] = (value.strip(), source)
    return rows


def test_config_show_sources(run_cli, in_tmp_cwd, tmp_path):
    rows = _show(run_cli)
    assert rows["sanitize.min_width"] == ("80", "default")
    assert rows["sanitize.max_file_size_mb"] == ("10.0", "default")
    assert rows["scan.extensions"][1] == "default"

    (in_tmp_cwd / "vdc-lake.toml").write_text("[sanitize]\nmin_width = 200\nmax_height = 1000\n")
    rows = _show(run_cli)
    assert rows["sanitize.min_width"] == ("200", str(in_tmp_cwd / "vdc-lake.toml"))

    strict = tmp_path / "strict.toml"
    strict.write_text("[sanitize]\nmin_width = 300\n")
    rows = _show(run_cli, config=strict)
    assert rows["sanitize.min_width"] == ("300", str(strict))  # --config beats ./vdc-lake.toml
    assert rows["sanitize.max_height"] == ("1000", str(in_tmp_cwd / "vdc-lake.toml"))
    assert rows["sanitize.min_height"] == ("80", "default")


def test_config_errors(run_cli, tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("[sanitize]\nmin_widht = 300\n")
    result = run_cli(["config", "show"], config=typo)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {typo}: unknown key 'min_widht' in [sanitize]; known keys: ")
    assert "min_width" in result.output

    typo.write_text("[sanitise]\nmin_width = 300\n")
    result = run_cli(["config", "show"], config=typo)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {typo}: unknown section [sanitise]; known sections: ")

    typo.write_text("[sanitize\n")
    result = run_cli(["config", "show"], config=typo)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: config file {typo} is not valid TOML: ")

    _fails(run_cli(["config", "show"], config=tmp_path / "absent.toml"),
           f"cannot read config file {tmp_path / 'absent.toml'}: No such file or directory")
