"""talkgs.utils.config: lists of named dataclasses (FitConfig.stages) merge by name."""

from __future__ import annotations

import dataclasses

import pytest

from talkgs.errors import TalkgsError
from talkgs.train.config import DensifyConfig, FitConfig, StageConfig
from talkgs.utils.config import from_dict, load_section, load_yaml, merge, save_yaml, to_dict

DEFAULT_STAGES = FitConfig().stages


def by_name(cfg: FitConfig) -> dict[str, StageConfig]:
    return {s.name: s for s in cfg.stages}


def test_defaults_are_what_the_tests_below_rely_on():
    assert [s.name for s in DEFAULT_STAGES] == ["static", "mouth", "face", "fuse"]
    face = by_name(FitConfig())["face"]
    assert face.sampler == "incremental" and face.densify.enabled is False and face.iterations != 100


def test_mapping_edits_one_field_and_keeps_the_rest():
    cfg = from_dict(FitConfig, {"stages": {"face": {"iterations": 100}}})
    assert [s.name for s in cfg.stages] == ["static", "mouth", "face", "fuse"]
    face = by_name(cfg)["face"]
    assert face == dataclasses.replace(by_name(FitConfig())["face"], iterations=100)
    assert face.sampler == "incremental" and face.densify.enabled is False
    assert [s for s in cfg.stages if s.name != "face"] == [s for s in DEFAULT_STAGES if s.name != "face"]


def test_mapping_merges_nested_fields():
    cfg = merge(FitConfig(), {"stages": {"mouth": {"densify": {"refine_every": 7}}, "fuse": {"lr": {"means": 1.0}}}})
    mouth, fuse = by_name(cfg)["mouth"], by_name(cfg)["fuse"]
    assert mouth.densify == dataclasses.replace(by_name(FitConfig())["mouth"].densify, refine_every=7)
    assert mouth.densify.max_gaussians == 5000  # the mouth stage's own value, not DensifyConfig's 30000
    assert fuse.lr.means == 1.0 and fuse.lr.network == 5e-4


def test_mapping_edits_the_config_it_is_merged_into():
    tiny = load_section(FitConfig, "tiny", "fit")
    cfg = merge(tiny, {"stages": {"static": {"iterations": 7}}})
    assert by_name(cfg)["static"] == dataclasses.replace(by_name(tiny)["static"], iterations=7)
    assert by_name(cfg)["static"].densify.max_gaussians == 3000  # tiny's, kept


def test_list_states_the_order_and_keeps_named_stage_fields():
    cfg = from_dict(FitConfig, {"stages": [{"name": "face", "iterations": 100}]})
    assert cfg.stages == [dataclasses.replace(by_name(FitConfig())["face"], iterations=100)]
    assert cfg.stages[0].sampler == "incremental" and cfg.stages[0].densify.enabled is False

    cfg = from_dict(FitConfig, {"stages": [{"name": "fuse"}, {"name": "static"}]})
    assert cfg.stages == [by_name(FitConfig())["fuse"], by_name(FitConfig())["static"]]


def test_list_entry_for_a_new_name_starts_from_the_dataclass_defaults():
    base = FitConfig(stages=[StageConfig(name="static", iterations=5)])
    cfg = merge(base, {"stages": [{"name": "static"}, {"name": "face", "sampler": "incremental"}]})
    assert cfg.stages == [StageConfig(name="static", iterations=5), StageConfig(name="face", sampler="incremental")]
    assert cfg.stages[1].densify == DensifyConfig()  # bare defaults: the base has no face stage


def test_list_repeated_names_pair_up_in_order():
    base = FitConfig(stages=[StageConfig(name="static", iterations=1), StageConfig(name="static", iterations=2)])
    cfg = merge(base, {"stages": [{"name": "static"}, {"name": "static", "sh_degree_every": 3}, {"name": "static"}]})
    assert [(s.iterations, s.sh_degree_every) for s in cfg.stages] == [(1, 500), (2, 3), (2000, 500)]


@pytest.mark.parametrize(("data", "message"), [
    ({"stages": {"fcae": {"iterations": 1}}},
     r"^config: stages has no item named 'fcae' \(known: static, mouth, face, fuse\)$"),
    ({"stages": [{"iterations": 1}]}, r"^config: stages\[0\] needs a name \(known: static, mouth, face, fuse\)$"),
    ({"stages": {"face": {"itrations": 1}}}, r"^config: unknown field\(s\) stages.face.itrations$"),
    ({"stages": [{"name": "face", "sampler": 3}]}, r"^config: stages\[0\].sampler must be str, got 3$"),
    ({"stages": {"face": 3}}, r"^config: stages.face must be a mapping of fields, got 3$"),
    ({"stages": {"face": {"name": "lips"}}}, r"^config: stages.face.name cannot rename"),
    ({"stages": "face"}, r"^config: stages must be a list of items or a mapping from item name to fields"),
    ({"stages": {"mouth": {"sampler": "opne"}}},
     r"^config: StageConfig.sampler must be one of uniform, incremental, open, got 'opne'$"),
])
def test_stage_errors_are_one_line(data, message):
    with pytest.raises(TalkgsError, match=message) as e:
        from_dict(FitConfig, data)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("preset", ["cpu", "tiny", "quality"])
def test_saved_run_config_round_trips(tmp_path, preset):
    """A run's fit/config.yaml (to_dict: every field, stages as a full list) rebuilds the same config."""
    cfg = load_section(FitConfig, preset, "fit")
    save_yaml(to_dict(cfg), tmp_path / "config.yaml")
    saved = load_yaml(tmp_path / "config.yaml")
    assert isinstance(saved["stages"], list)
    assert from_dict(FitConfig, saved) == cfg
    # A full list replaces every field, whatever config it is merged onto.
    other = load_section(FitConfig, "quality" if preset != "quality" else "tiny", "fit")
    assert merge(other, saved) == cfg


def test_a_yaml_file_with_the_mapping_form(tmp_path):
    (tmp_path / "mine.yaml").write_text("fit:\n  stages:\n    face:\n      iterations: 100\n")
    cfg = load_section(FitConfig, str(tmp_path / "mine.yaml"), "fit")
    assert cfg == from_dict(FitConfig, {"stages": {"face": {"iterations": 100}}})
