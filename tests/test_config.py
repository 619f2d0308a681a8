from dataclasses import dataclass, field

import pytest

from selftrain.config import ConfigError, parse_cli


@dataclass
class Inner:
    lr: float = 1e-5
    epochs: int = 1


@dataclass
class Outer:
    name: str = "run"
    model: str = "tiny-random"
    ks: list[int] = field(default_factory=lambda: [1, 2])
    out_dir: str | None = None
    flag: bool = False
    train: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: base\ntrain:\n  lr: 0.001\n  epochs: 3\n")
    cfg = parse_cli(Outer, [f"config={cfg_file}", "train.lr=2e-6", "ks=[1,4,8]", "flag=true", "name=123"])
    assert cfg.name == "123" and cfg.flag is True and cfg.ks == [1, 4, 8]
    assert cfg.train.lr == 2e-6 and cfg.train.epochs == 3
    assert isinstance(cfg.train, Inner)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        parse_cli(Outer, ["modle=x"])
    assert "modle" in str(e.value) and "model" in str(e.value) and "out_dir" in str(e.value)


def test_nested_unknown_key_lists_section_keys():
    with pytest.raises(ConfigError, match="lr, epochs|epochs, lr"):
        parse_cli(Outer, ["train.lrr=1"])


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match="train.epochs"):
        parse_cli(Outer, ["train.epochs=abc"])


def test_bad_word_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="argument 1"):
        parse_cli(Outer, ["lr"])
    with pytest.raises(ConfigError, match="nope.yaml"):
        parse_cli(Outer, [f"config={tmp_path / 'nope.yaml'}"])


def test_optional_field_accepts_null_and_value():
    assert parse_cli(Outer, ["out_dir=null"]).out_dir is None
    assert parse_cli(Outer, ["out_dir=/tmp/x"]).out_dir == "/tmp/x"
