"""Config: YAML + --set overrides, validated with errors that name the key."""

import pytest

from distnn.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


def test_bundled_configs_load():
    for name in ("quickstart", "mnist", "fashion_mnist", "cifar10"):
        cfg = load_config(name)
        assert cfg.model and cfg.train.epochs > 0


def test_overrides_are_validated_like_yaml():
    cfg = load_config(None, ["train.epochs=7", "optimizer.name=adam", "schedule.base_lr=1e-3"])
    assert cfg.train.epochs == 7 and cfg.optimizer.name == "adam" and cfg.schedule.base_lr == 1e-3
    with pytest.raises(ConfigError, match="train.epochs: 'many' is not an integer"):
        load_config(None, ["train.epochs=many"])


@pytest.mark.parametrize("raw,match", [
    ({"train": {"epoch": 3}}, r"unknown key\(s\) train\.epoch"),
    ({"trian": {}}, r"unknown key\(s\) trian"),
    ({"train": {"global_batch": 0}}, "train.global_batch: 0 must be > 0"),
    ({"optimizer": {"mu": 1.5}}, r"optimizer.mu: 1.5 must be in \[0, 1\)"),
    ({"optimizer": {"name": "lbfgs"}}, "optimizer.name: 'lbfgs' is not one of"),
    ({"data": {"augment": "yes"}}, "data.augment: 'yes' is not a boolean"),
    ({"model": "resnet"}, "model: 'resnet' is not a list"),
    ({"schedule": {"base_lr": -1}}, "schedule.base_lr: -1.0 must be > 0"),
    ({"comm": {"backend": "gloo"}}, "comm.backend: 'gloo' is not one of"),
    ({"comm": {"workers": 0}}, "comm.workers: 0 must be > 0"),
    ({"comm": {"max_failures": -1}}, "comm.max_failures: -1 must be >= 0"),
])
def test_bad_values_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_ray_settings():
    cfg = load_config(None, ["comm.backend=ray", "comm.workers=4", "comm.max_failures=2"])
    assert (cfg.comm.backend, cfg.comm.workers, cfg.comm.max_failures) == ("ray", 4, 2)


def test_round_trip_and_bad_override_syntax():
    cfg = load_config("mnist")
    assert from_dict(to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("no/such/config.yaml")
