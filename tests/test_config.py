"""The one strict override path: YAML files, CLI flags and search spaces all go through it."""

from pathlib import Path

import pytest

from hyperray.cli import parse_args
from hyperray.config import (
    Config,
    ConfigKeyError,
    absolute_paths,
    load_config,
    override,
    valid_keys,
)

CONFIGS = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml"))


def test_overrides_are_coerced_to_field_types():
    config = override(
        Config(),
        {
            "lora.rank": "4",
            "lora.lightweight": "true",
            "train.lr": "1e-3",
            "model.target_modules": "q_proj,k_proj",
            "data.path": "none",
        },
    )
    assert config.lora.rank == 4 and config.lora.lightweight is True
    assert config.train.lr == pytest.approx(1e-3)
    assert config.model.target_modules == ["q_proj", "k_proj"]
    assert config.data.path is None
    assert Config().lora.rank == 8, "override returns a copy"


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigKeyError, match="lora.rnk.*valid keys: lora.rank, lora.alpha"):
        override(Config(), {"lora.rnk": 4})
    with pytest.raises(ConfigKeyError, match="unknown config key 'nope.x'"):
        override(Config(), {"nope.x": 1})
    assert "hypernet.head" in valid_keys(Config())


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="lora.rank"):
        override(Config(), {"lora.rank": "many"})
    with pytest.raises(ValueError, match="lora.rank must be >= 1"):
        override(Config(), {"lora.rank": 0})
    with pytest.raises(ValueError, match="encoder.kind"):
        override(Config(), {"encoder.kind": "bag-of-words"})
    with pytest.raises(ValueError, match="lora.core_size"):
        override(Config(), {"lora.lightweight": True, "lora.rank": 16, "lora.core_size": 8})


def test_yaml_then_cli_then_output_dir(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  rank: 2\nhypernet:\n  head: iterative\n")
    config, _ = parse_args(
        ["--config", str(path), "--lora.rank=6", "--hypernet.depth", "3", "--output-dir", "x"]
    )
    assert (config.lora.rank, config.hypernet.head, config.hypernet.depth, config.output_dir) == (
        6,
        "iterative",
        3,
        "x",
    )
    path.write_text("lora:\n  rnak: 2\n")
    with pytest.raises(ConfigKeyError, match=r"c.yaml.*lora.rnak"):
        load_config(path)


def test_cli_rejects_flags_that_are_not_settings():
    with pytest.raises(SystemExit):
        parse_args(["--verbose"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_configs_are_shipped():
    assert any(p.name == "tiny.yaml" for p in CONFIGS)


def test_absolute_paths_anchors_local_paths_and_leaves_uris_and_hub_ids(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    config = override(
        Config(),
        {
            "data.path": "../shared/data/sni/train",
            "train.init_from": "runs:/abc/checkpoint",
            "output_dir": "runs/x",
            "model.name": "models/mine",
        },
    )
    anchored = absolute_paths(config, tmp_path)
    assert anchored.data.path == str((tmp_path / "../shared/data/sni/train").resolve())
    assert anchored.output_dir == str(tmp_path / "runs" / "x")
    assert anchored.model.name == str(tmp_path / "models" / "mine")
    assert anchored.train.init_from == "runs:/abc/checkpoint"
    assert anchored.data.eval_path is None
    hub = override(config, {"model.name": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert absolute_paths(hub, tmp_path).model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
