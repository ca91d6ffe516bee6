"""Option rules (vdc_lake.config.rules): each value checked by its option's rule, with a message that
names the CLI option or the config file and key; n_samples fitted to the levels; SQL that writes files."""

from __future__ import annotations

import pytest

from vdc_lake.catalog.connection import Catalog


def test_the_library_applies_the_same_rules(tmp_path):
    from vdc_lake.config.loader import Config
    from vdc_lake.review.decisions import decision_query
    from vdc_lake.errors import InvalidValueError

    (tmp_path / "vdc-lake.toml").write_text("[rotation_correction]\nthreshold = 1.5\n")
    with pytest.raises(InvalidValueError, match=r"^\[rotation_correction\] threshold in .*vdc-lake\.toml must be "
                                                r"a probability between 0 and 1, not 1\.5$"):
        Config.load(search_dir=tmp_path)
    config = Config.bundled()
    with pytest.raises(InvalidValueError, match=r"^--threshold must be a cosine distance between 0 and 2, not 5$"):
        decision_query("dedup", config, threshold=5)
    with pytest.raises(InvalidValueError, match=r"^--min-score \(3\) must not exceed --max-score \(1\)$"):
        decision_query("score", config, name="aesthetic", min_score=3.0, max_score=1.0)


def test_validate_rules_on_their_own(tmp_path):
    from vdc_lake.config import rules as validate
    from vdc_lake.errors import InvalidValueError

    with Catalog(tmp_path / "c.duckdb", create=True) as catalog:
        done = catalog.begin_run("sample", {})
        catalog.finish_run(done)
        failed = catalog.begin_run("sample", {})
        catalog.finish_run(failed, status="failed", error="killed")
        interrupted = catalog.begin_run("apply:dedup", {})  # never finished: restore may undo it
        assert validate.check_run(catalog, done, "sample") == done
        with pytest.raises(InvalidValueError, match=rf"^--run {failed}: sample run {failed} did not finish "
                                                    rf"\(status failed\); give a finished sample run \(newest: {done}\)$"):
            validate.check_run(catalog, failed, "sample")
        assert validate.check_run(catalog, interrupted, "apply", finished=False) == interrupted
        with pytest.raises(InvalidValueError, match="there is none yet: run `vdc-lake cluster` first"):
            validate.check_run(catalog, done, "cluster", name="--cluster-run")
    assert validate.fit_levels([100, 10, 5, 2], [10, 5, 3], explicit=False)[0] == [10, 5, 3, 3]
    assert validate.fit_levels([12], [10, 5, 3], explicit=False)[0] == [10]
    with pytest.raises(InvalidValueError, match=r"--n-samples has 3 values but --n-clusters has 1 levels"):
        validate.fit_levels([12], [10, 5, 3], explicit=True)


def test_every_config_option_has_a_rule_and_the_defaults_pass_it():
    from vdc_lake.config import rules as validate
    from vdc_lake.config.loader import Config

    described = Config.bundled().describe()
    missing = [f"{s}.{k}" for s, k, _, _ in described if (s, k) not in validate.RULES]
    assert missing == [], f"add a rule to vdc_lake/config/rules.py RULES for {missing}"
    validate.check_config(described)


# One wrong-typed value per kind of rule: what a TOML file may hold instead of the right type.
WRONG_TYPE = {"Number": "ten", "Bound": "low", "Choice": 5, "Flag": "yes", "Text": 5, "Levels": "10 5",
              "Extensions": ".jpg", "Formats": "JPEG", "JpegQuality": 90.5}


def test_every_config_value_of_the_wrong_type_names_key_expectation_and_file(tmp_path):
    """Each option of defaults.toml, given a value of the wrong type in a config file, is refused with
    one message naming its section and key, what it must be, and the file (never used as it is)."""
    from vdc_lake.config import rules as validate
    from vdc_lake.config.loader import Config
    from vdc_lake.errors import ConfigError

    path = tmp_path / "wrong.toml"
    for (section, key), rule in validate.RULES.items():
        value = WRONG_TYPE[type(rule).__name__]
        path.write_text(f"[{section}]\n{key} = {value!r}\n".replace("'", '"'))
        with pytest.raises(ConfigError) as err:
            Config.load(path, search_dir=tmp_path)
        message = str(err.value)
        assert message.startswith(f"[{section}] {key} in {path} must be {rule.requirement()}"), message
        assert "\n" not in message
    for section, key, text in [("scan", "workers", "2.0"), ("sanitize", "max_pixels", "1e9"),
                               ("hierarchical_kmeans", "seed", "1.0"), ("hierarchical_kmeans", "n_samples", "[3.0]")]:
        path.write_text(f"[{section}]\n{key} = {text}\n")
        with pytest.raises(ConfigError, match=r"written without a decimal point or exponent"):
            Config.load(path, search_dir=tmp_path)


def test_check_value_names_the_config_key_or_the_option_given():
    from vdc_lake.config.rules import check_value
    from vdc_lake.errors import InvalidValueError

    assert check_value("sanitize", "min_width", 120) == 120
    assert check_value("sanitize", "min_width", None) is None  # not given: nothing to check
    with pytest.raises(InvalidValueError) as err:
        check_value("sanitize", "min_width", 0)
    assert str(err.value) == "[sanitize] min_width must be a whole number of pixels >= 1, not 0"
    with pytest.raises(InvalidValueError) as err:
        check_value("dedup", "precision", "fp64", "--precision")
    assert str(err.value).startswith("--precision must be ") and str(err.value).endswith(", not 'fp64'")
    with pytest.raises(InvalidValueError, match=r"^--threshold must be a cosine distance between 0 and 2, not inf$"):
        check_value("apply_deduplication", "threshold", float("inf"), "--threshold")
    with pytest.raises(InvalidValueError, match=r"^\[sanitize\] check_corruption must be "):
        check_value("sanitize", "check_corruption", 1)  # a number is not a flag
    assert check_value("no_such_section", "anything", object) is object  # no rule: its reader checks it


def test_check_section_checks_each_value_and_the_min_max_pairs():
    from vdc_lake.config.rules import check_section
    from vdc_lake.errors import InvalidValueError

    values = {"min_width": 100, "max_width": 4000, "min_height": 10}
    assert check_section("sanitize", values) is values
    with pytest.raises(InvalidValueError) as err:
        check_section("sanitize", {"min_width": 500, "max_width": 400})
    assert str(err.value) == ("[sanitize] min_width (500) must not exceed [sanitize] max_width (400); "
                              "lower the first or raise the second")
    options = {"min_score": "--min-score", "max_score": "--max-score"}
    with pytest.raises(InvalidValueError, match=r"^--min-score \(0\.9\) must not exceed --max-score \(0\.1\)"):
        check_section("filter_by_score", {"min_score": 0.9, "max_score": 0.1}, options.get)
    with pytest.raises(InvalidValueError, match=r"^--max-score must be "):
        check_section("filter_by_score", {"min_score": 0.1, "max_score": "high"}, options.get)


def test_a_config_file_value_is_named_by_its_file_and_key(tmp_path):
    from vdc_lake.config.rules import check_config, config_origin
    from vdc_lake.errors import InvalidValueError

    assert config_origin("scan", "workers", "default") == "[scan] workers (bundled default)"
    assert config_origin("scan", "workers", "/x/vdc-lake.toml") == "[scan] workers in /x/vdc-lake.toml"
    check_config([("scan", "workers", 4, "/x/vdc-lake.toml"), ("sanitize", "min_width", 1, "default")])
    with pytest.raises(InvalidValueError) as err:
        check_config([("scan", "workers", -1, "/x/vdc-lake.toml")])
    assert str(err.value).startswith("[scan] workers in /x/vdc-lake.toml must be a whole number of processes")
    with pytest.raises(InvalidValueError, match=r"^\[scan\] workers in /x/a\.toml must be .*written without a "
                                                r"decimal point or exponent, not 2\.0$"):
        check_config([("scan", "workers", 2.0, "/x/a.toml")])


def test_fit_levels_keeps_matching_counts_and_fits_only_the_default():
    from vdc_lake.config.rules import fit_levels
    from vdc_lake.errors import InvalidValueError

    assert fit_levels([20, 5], [4, 2], explicit=True) == ([4, 2], None)
    fitted, note = fit_levels([20, 5], [10, 5, 3], explicit=False)
    assert fitted == [10, 5]
    assert note == ("note: n_samples 10 5 3 (default) has 3 values for 2 levels; using 10 5 "
                    "(pass --n-samples to choose)")
    assert fit_levels([9, 6, 4, 2, 1], [10, 5, 3], explicit=False)[0] == [10, 5, 3, 3, 3]
    with pytest.raises(InvalidValueError) as err:
        fit_levels([20, 5], [10, 5, 3], explicit=True, samples_name="n_samples", clusters_name="n_clusters")
    assert str(err.value) == ("n_samples has 3 values but n_clusters has 2 levels; give one count per level, "
                              "e.g. n_samples 10 5")
    with pytest.raises(InvalidValueError, match=r"^--n-samples has 0 values but --n-clusters has 2 levels; .* "
                                                r"e\.g\. --n-samples 10 5$"):
        fit_levels([20, 5], [], explicit=False)
