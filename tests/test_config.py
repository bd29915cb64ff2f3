"""Config loading, composition, overrides, and a clear error for every kind of bad input."""

import ast
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jepa import cli, config
from jepa.config.docs import SCHEMA_MODULES, SECTION_ORDER, field_docs
from jepa.errors import ConfigError
from jepa.config.rope_check import ROPE_FAR_CELLS, ROPE_MAX_FAR_COSINE
from jepa.models.rope import RotaryEmbedding


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_compose_in_order_then_file_then_overrides(tmp_path):
    write(tmp_path / "a.yaml", {"seed": 1, "optim": {"lr": 0.1, "eps": 1e-6}})
    write(tmp_path / "b.yaml", {"defaults": ["a"], "optim": {"lr": 0.2}, "seed": 2})
    write(tmp_path / "c.yaml", {"defaults": ["b.yaml"], "optim": {"warmup_steps": 7}})
    cfg = config.load(tmp_path / "c.yaml", ["optim.lr=3e-4", "model.rope.theta=10"])
    assert cfg.seed == 2                       # b over a
    assert cfg.optim.eps == 1e-6               # from a, untouched by b and c
    assert cfg.optim.warmup_steps == 7         # c
    assert cfg.optim.lr == pytest.approx(3e-4)  # override beats every file
    assert cfg.model.rope.theta == 10.0
    assert isinstance(cfg, config.Config) and isinstance(cfg.optim, config.OptimConfig)


def test_override_sets_a_list_of_sections(tmp_path):
    cfg = config.load(write(tmp_path / "x.yaml", {"model": {"depth": 6}}),
                      ["hierarchy.levels=[{block: 2, pool: 2}, {block: 5, weight: 0.5}]"])
    assert [(lv.block, lv.pool, lv.weight) for lv in cfg.hierarchy.levels] == [(2, 2, 1.0), (5, 1, 0.5)]


def test_yaml_round_trip(tmp_path):
    cfg = config.load(config.CONFIG_DIR / "base.yaml", ["optim.lr=5e-4", "data.crop_scale=[0.5,1.0]"])
    again = config.load(write(tmp_path / "resolved.yaml", config.to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("raw, names", [
    ({"optim": {"lrr": 1.0}}, ["optim.lrr", "optim.lr"]),
    ({"modle": {}}, ["modle", "model"]),
    ({"model": {"rope": {"thetta": 3}}}, ["model.rope.thetta", "model.rope.theta"]),
    ({"hierarchy": {"levels": [{"blok": 1}]}}, ["hierarchy.levels[0].blok", "hierarchy.levels[0].block"]),
    ({"data": {"sources": [{"url": "x"}]}}, ["data.sources[0].url", "data.sources[0].urls"]),
])
def test_unknown_key_names_it_and_the_closest(raw, names):
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    for name in names:
        assert f"`{name}`" in str(e.value)


@pytest.mark.parametrize("raw, key", [
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"seed": [1, 2]}, "seed"),
    ({"deepspeed": {"bf16": "maybe"}}, "deepspeed.bf16"),
])
def test_wrong_type_names_the_key(raw, key):
    with pytest.raises(ConfigError, match=f"`{key}`"):
        config.from_dict(raw)


@pytest.mark.parametrize("raw, key, fragment", [
    ({"optim": {"lr": -1e-3}}, "optim.lr", ">= 0"),
    ({"optim": {"warmup_steps": 20, "total_steps": 10}}, "optim.warmup_steps", "total_steps=10"),
    ({"mask": {"targets": [{"spatial_scale": [0.1, 1.5]}]}}, "mask.targets[0].spatial_scale", "(0.0, 1.0]"),
    ({"mask": {"context_scale": [0.9, 0.8]}}, "mask.context_scale", "min <= max"),
    ({"mask": {"kind": "checkerboard"}}, "mask.kind", "multiblock2d"),
    ({"model": {"embed_dim": 120, "num_heads": 4}}, "model.num_heads", "head_dim % 4"),
    ({"model": {"embed_dim": 100, "num_heads": 3}}, "model.num_heads", "must divide"),
    ({"model": {"rope": {"kind": "3d"}, "embed_dim": 64, "num_heads": 16}}, "model.num_heads", "head_dim >= 6"),
    ({"model": {"rope": {"normalize": "avg"}}}, "model.rope.normalize", "separate"),
    ({"model": {"depth": 4}, "hierarchy": {"levels": [{"block": 4}]}}, "hierarchy.levels[0].block", "4 blocks"),
    ({"data": {"image_size": 100}}, "data.image_size", "patch_size=16"),
    ({"data": {"num_frames": 7}, "mask": {"kind": "multiblock3d"}}, "data.num_frames", "tubelet_size=2"),
    ({"deepspeed": {"zero_stage": 4}}, "deepspeed.zero_stage", "0, 1, 2, 3"),
    ({"ema": {"momentum": 1.5}}, "ema.momentum", "[0, 1]"),
    ({"data": {"sources": [{"urls": ""}]}}, "data.sources[0].urls", "shard URLs"),
])
def test_out_of_range_names_key_value_and_need(raw, key, fragment):
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    assert f"`{key}`" in str(e.value) and fragment in str(e.value)


@pytest.mark.parametrize("config_name, override, key, fix", [
    ("vjepa_vitl16", "model.predictor.num_heads=6", "model.predictor.num_heads", "use num_heads=2 (head_dim 24)"),
    ("vjepa_vitl16", "model.num_heads=8", "model.num_heads", "use num_heads=2 (head_dim 32)"),
    ("ijepa_vitb16", "model.predictor.num_heads=8", "model.predictor.num_heads", "use num_heads=2 (head_dim 16)"),
    ("ijepa_vitb16", "model.predictor.num_heads=4", "model.predictor.num_heads", "use num_heads=2 (head_dim 16)"),
    ("vjepa_vitl16", "model.rope.temporal_scale=1e5", "model.num_heads", "raise model.embed_dim or change model.rope"),
])
def test_rope_that_rotates_two_cells_alike_is_refused(config_name, override, key, fix):
    """One line naming the key and the largest head count whose RoPE rows are all distinct and far
    cells' codes unalike (or, when none is, what else to change)."""
    with pytest.raises(ConfigError) as e:
        config.load(config.CONFIG_DIR / "small" / f"{config_name}.yaml", [override])
    message = str(e.value)
    assert message.startswith(f"`{key}` = ") and fix in message and "\n" not in message


def test_rope_collision_names_two_cells_that_share_a_row_and_the_fixed_config_loads():
    """Predictor 36 wide with 6 heads on the small video config: head_dim 6 is one `centre` pair per
    axis, which repeats every n/2 cells of the 4 x 8 x 8 grid. The shipped config uses 48 / 2."""
    path = config.CONFIG_DIR / "small" / "vjepa_vitl16.yaml"
    with pytest.raises(ConfigError) as e:
        config.load(path, ["model.predictor.embed_dim=36", "model.predictor.num_heads=6"])
    found = re.search(r"cells (\(.*?\)) and (\(.*?\)) of the (\(.*?\)) token grid", str(e.value))
    a, b, grid = (ast.literal_eval(g) for g in found.groups())
    assert grid == (4, 8, 8) and a != b
    assert all((x - y) % (n // 2) == 0 for x, y, n in zip(a, b, grid))
    table = RotaryEmbedding(head_dim=6, ndim=3).table(grid)
    assert torch.dist(table[np.ravel_multi_index(a, grid)], table[np.ravel_multi_index(b, grid)]) < 1e-6
    predictor = config.load(path).model.predictor
    assert (predictor.embed_dim, predictor.num_heads) == (48, 2)


def test_rope_whose_far_cells_are_nearly_alike_names_them_and_the_bound():
    """The small image predictor at 4 heads (head_dim 8, two `centre` pairs per axis): the fast pair
    repeats every 4 cells, so cells 4 apart get codes 0.95 alike. The error names two such cells."""
    with pytest.raises(ConfigError) as e:
        config.load(config.CONFIG_DIR / "small" / "ijepa_vitb16.yaml", ["model.predictor.num_heads=4"])
    found = re.search(r"cells (\(.*?\)) and (\(.*?\)) of the (\(.*?\)) token grid, (\d+) apart, nearly the same "
                      r"rotation \(cosine similarity ([\d.]+)", str(e.value))
    a, b, grid = (ast.literal_eval(g) for g in found.groups()[:3])
    apart, cosine = int(found[4]), float(found[5])
    assert grid == (8, 8) and apart == max(abs(x - y) for x, y in zip(a, b)) >= ROPE_FAR_CELLS
    table = RotaryEmbedding(head_dim=8, ndim=2).table(grid).double()
    rows = table[[np.ravel_multi_index(a, grid), np.ravel_multi_index(b, grid)]]
    measured = torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=0).item()
    assert measured == pytest.approx(cosine, abs=1e-3) and measured > ROPE_MAX_FAR_COSINE


def test_missing_file_cycle_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope"):
        config.load(tmp_path / "nope.yaml")
    write(tmp_path / "a.yaml", {"defaults": ["b"]})
    write(tmp_path / "b.yaml", {"defaults": ["a"]})
    with pytest.raises(ConfigError, match="cycle"):
        config.load(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path / "bad.yaml", "optim: {lr: [1,"))
    with pytest.raises(ConfigError, match="not found: missing"):
        config.load(write(tmp_path / "d.yaml", {"defaults": ["missing"]}))


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=3", "optim.lr=[1,"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="malformed override"):
        config.load(config.CONFIG_DIR / "base.yaml", [item])


def test_cli_bad_key_is_one_line_exit_2(capsys):
    assert cli.main(["config", "show", "base", "optim.lrr=3e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jepa: error: unknown config key `optim.lrr`; did you mean `optim.lr`?"


def test_cli_show_prints_resolved_config(capsys):
    assert cli.main(["config", "show", "base", "optim.lr=3e-4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == pytest.approx(3e-4)
    assert set(shown) == {f.name for f in dataclasses.fields(config.Config)}


def test_every_shipped_config_loads(capsys):
    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "config files valid" in out


def test_config_check_reports_a_broken_file(tmp_path, capsys):
    write(tmp_path / "ok.yaml", {"seed": 1})
    write(tmp_path / "broken.yaml", {"optim": {"lrr": 1}})
    assert cli.main(["config", "check", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "ok      " in out and "FAILED  " in out and "optim.lrr" in out


def test_every_field_is_documented():
    docs = field_docs()
    documented = {cls for _, cls in SECTION_ORDER}
    schema = {obj for module in SCHEMA_MODULES for obj in vars(module).values()
              if dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__}
    assert schema == documented, "every config section appears in the reference"
    missing = [f"{cls.__name__}.{f.name}" for cls in schema for f in dataclasses.fields(cls)
               if not docs[cls.__name__].get(f.name)]
    assert not missing, f"fields without a docstring: {missing}"


def test_docs_reference_is_current():
    from jepa.config.docs import render

    committed = (Path(__file__).parent.parent / "docs" / "configs.md").read_text()
    assert committed == render(), "regenerate with: jepa config docs > docs/configs.md"
