"""`--set key=value`: nested settings change, typed; unknown keys and unreadable values are named."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from latentdefence.cli import app
from latentdefence.experiments.dld_config import dld_config
from latentdefence.experiments.lad_config import lad_config
from latentdefence.experiments.overrides import apply_overrides


def test_nested_and_top_level_settings_take_their_types() -> None:
    cfg = apply_overrides(lad_config("cpu"), ["attack.pgd_steps=40", "boundary_eps=8", "eps_scale=latent",
                                              "large_eps=0.1,5,20", "classifier.epochs=5", "train_limit=1000"])
    assert cfg.attack.pgd_steps == 40 and isinstance(cfg.attack.pgd_steps, int)
    assert cfg.boundary_eps == 8.0 and cfg.eps_scale == "latent"
    assert cfg.large_eps == (0.1, 5.0, 20.0) and cfg.classifier.epochs == 5 and cfg.train_limit == 1000
    assert lad_config("cpu").attack.pgd_steps == 20  # the profile itself is untouched


def test_mappings_merge_and_none_can_be_set() -> None:
    cfg = apply_overrides(dld_config("cpu"), ['attacks.n={"pgd": 50}', "index_max_train=none"])
    assert cfg.attacks.n["pgd"] == 50 and cfg.attacks.n["cw"] == dld_config("cpu").attacks.n["cw"] and cfg.index_max_train is None


@pytest.mark.parametrize("name", ["cw_search_steps", "cw_binary_search_steps"])
def test_either_name_of_the_cw_search_steps_sets_it_in_both_experiments(name: str) -> None:
    """DLD and LAD name CW's binary-search steps differently (both names are in cache keys); --set takes either."""
    assert apply_overrides(dld_config("cpu"), [f"attacks.{name}=3"]).attacks.cw_binary_search_steps == 3
    assert apply_overrides(lad_config("cpu"), [f"attack.{name}=3"]).attack.cw_search_steps == 3


@pytest.mark.parametrize(("assignment", "error", "match"), [
    ("attack.pgd_stepz=3", KeyError, "pgd_stepz"),
    ("attack.pgd_steps=many", ValueError, "attack.pgd_steps"),
    ("seed", ValueError, "KEY=VALUE"),
    ("seed.x=1", KeyError, "not inside a group"),
])
def test_bad_assignments_are_named(assignment: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        apply_overrides(lad_config("cpu"), [assignment])


def test_cli_rejects_an_unknown_setting_with_exit_code_2(tmp_path) -> None:
    result = CliRunner().invoke(app, ["reproduce", "lad-mnist-table2", "--profile", "smoke", "--out", str(tmp_path),
                                      "--set", "attack.nonsense=1"])
    assert result.exit_code == 2 and "nonsense" in result.output
