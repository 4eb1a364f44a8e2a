"""Config: YAML + --set overrides, validated with errors that name the key."""

import dataclasses
import pickle

import pytest

from distnn.config import (
    Config,
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    schedule_spec,
    to_dict,
)
from distnn.optim import RULES, SCHEDULES, make_optimizer


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
    ({"train": {"l1": -0.1}}, r"^train\.l1: -0\.1 must be >= 0$"),  # one line
    ({"optimizer": {"mu": 1.5}}, r"optimizer.mu: 1.5 must be in \[0, 1\)"),
    ({"optimizer": {"name": "bfgs"}}, "optimizer.name: 'bfgs' is not one of"),
    ({"data": {"augment": "yes"}}, "data.augment: 'yes' is not a boolean"),
    ({"model": "resnet"}, "model: 'resnet' is not a list"),
    ({"schedule": {"base_lr": -1}}, "schedule.base_lr: -1.0 must be > 0"),
    ({"comm": {"backend": "gloo"}}, "comm.backend: 'gloo' is not one of"),
    ({"comm": {"workers": 0}}, "comm.workers: 0 must be > 0"),
    ({"comm": {"max_failures": -1}}, "comm.max_failures: -1 must be >= 0"),
    ({"comm": {"bucket_mb": 0}}, "comm.bucket_mb: 0.0 must be > 0"),
    ({"comm": {"bucket_mb": -2}}, "comm.bucket_mb: -2.0 must be > 0"),
    ({"comm": {"compress": "int8"}}, "comm.compress: 'int8' is not one of none, bf16, fp16"),
    ({"comm": {"transport": "nccl"}},
     "comm.transport: 'nccl' is not one of auto, object_store, shm"),
    ({"comm": {"overlap": "yes"}}, "comm.overlap: 'yes' is not a boolean"),
    ({"comm": {"compress": "bf16"}, "train": {"invariant": True}},
     "comm.compress: bf16 with train.invariant: true; expected compress none"),
    ({"data": {"validate_on": "val"}}, "data.validate_on: 'val' is not one of holdout, test"),
    ({"data": {"validate_on": "test", "val_size": 100}},
     "data.validate_on: test with data.val_size 100, expected one validation set"),
    ({"data": {"validate_on": "test", "folds": 5}},
     "data.validate_on: test with data.folds 5, expected one validation set"),
    ({"data": {"preprocess": "zca"}},
     "data.preprocess: 'zca' is not one of channel_mean_std, mean_image, pca_whiten"),
    ({"data": {"preprocess": "mean_image", "pca_components": 10}},
     "data.pca_components: 10 with data.preprocess mean_image; expected 0"),
    ({"data": {"pca_components": -1}}, "data.pca_components: -1 must be >= 0"),
    ({"data": {"whiten_eps": 0}}, "data.whiten_eps: 0.0 must be > 0"),
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


# -- optimizer and schedule: the keys are what distnn.optim declares ------------------------------
@pytest.mark.parametrize("raw,match", [
    ({"optimizer": {"name": "adam", "mu": 0.9}},
     r"optimizer.mu: adam does not take mu \(taken by momentum, nesterov\); adam takes beta1, "
     "beta2, eps"),
    ({"optimizer": {"mmu": 0.9}}, "optimizer.mmu: unknown key; expected some of lr_mult, mu, name"),
    ({"optimizer": {"name": "adamw", "wd": 0.1}}, "optimizer.wd: unknown key; expected some of "
                                                  "beta1, beta2, eps, lr_mult, name, weight_decay"),
    ({"optimizer": {"name": "adamw", "weight_decay": -1}},
     "optimizer.weight_decay: -1.0 must be >= 0"),
    ({"optimizer": {"name": "adam", "eps": "tiny"}},
     "optimizer.eps: 'tiny' is not a finite number"),
    ({"schedule": {"name": "step", "gamma": 0.9}},
     r"schedule.gamma: step does not take gamma \(taken by exponential\)"),
    ({"schedule": {"name": "step", "scale_LR": True}}, "schedule.scale_LR: unknown key; expected "
     "some of base_lr, drop, every, name, per, reference_batch, scale_lr, warmup_epochs"),
    ({"schedule": {"name": "plateau", "mode": "max"}},
     "schedule.mode: comes from early_stopping.mode"),
    ({"schedule": {"name": "plateau", "patience": 1.5}},
     "schedule.patience: 1.5 is not an integer"),
    ({"schedule": {"name": "step", "every": 0}}, "schedule.every: 0.0 must be > 0"),
    ({"schedule": {"name": "cosine", "base_lr": 0.1, "min_lr": 0.2}},
     r"schedule.min_lr: 0.2 must be in \[0, 0.1\]"),
    ({"schedule": {"name": "cosine", "total_epochs": -1}},
     "schedule.total_epochs: -1.0 must be > 0"),
    ({"schedule": {"warmup_start_factor": 2}},
     r"schedule.warmup_start_factor: 2.0 must be in \[0, 1\]"),
    ({"schedule": {"per": "batch"}}, "schedule.per: 'batch' is not one of step, epoch"),
    ({"schedule": {"reference_batch": 0}}, "schedule.reference_batch: 0 must be > 0"),
    ({"schedule": {"params": {}}}, "schedule.params: unknown key"),
    ({"schedule": []}, r"schedule: \[\] is not a mapping"),
])
def test_optimizer_and_schedule_keys_are_checked_by_their_declaration(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_sections_hold_the_declared_values_with_defaults():
    cfg = from_dict({"optimizer": {"name": "adamw", "weight_decay": 0.01, "eps": "1e-7"},
                     "schedule": {"name": "step", "base_lr": 0.1}})
    assert cfg.optimizer.name == "adamw"
    assert cfg.optimizer.params == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                                    "weight_decay": 0.01}
    assert make_optimizer(cfg.optimizer.name, **cfg.optimizer.params).weight_decay == 0.01
    assert cfg.schedule.base_lr == 0.1 and cfg.schedule.per == "step"
    assert cfg.schedule.params == {"base_lr": 0.1, "drop": 0.5, "every": 10.0,
                                   "warmup_epochs": 0.0, "warmup_start_factor": 0.1}
    assert Config() == from_dict({})


def test_schedule_takes_epochs_mode_and_batch_from_other_sections():
    cfg = from_dict({"train": {"epochs": 7, "global_batch": 512},
                     "early_stopping": {"monitor": "val_accuracy", "mode": "max"},
                     "schedule": {"name": "cosine", "scale_lr": True, "base_lr": 0.1}})
    assert "total_epochs" not in cfg.schedule.params  # follows train.epochs, also once saved
    assert schedule_spec(cfg) == {"name": "cosine", "base_lr": 0.2, "min_lr": 0.0,
                                  "warmup_epochs": 0.0, "warmup_start_factor": 0.1,
                                  "total_epochs": 7.0}
    assert schedule_spec(from_dict({"schedule": {"name": "cosine", "total_epochs": 0}}))[
        "total_epochs"] == 3.0  # 0, as configs saved before 0.2 have it: train.epochs
    assert schedule_spec(from_dict({"schedule": {"name": "cosine", "total_epochs": 9}}))[
        "total_epochs"] == 9.0
    plateau = from_dict({"early_stopping": {"mode": "max"}, "schedule": {"name": "plateau"}})
    assert schedule_spec(plateau)["mode"] == "max" and "mode" not in plateau.schedule.params


def test_overrides_reach_the_declaration():
    assert load_config(None, ["optimizer.mu=0.95"]).optimizer.params == {"mu": 0.95}
    with pytest.raises(ConfigError, match=r"optimizer.mu: 1.5 must be in \[0, 1\)"):
        load_config(None, ["optimizer.mu=1.5"])
    # Switching the rule drops the file's keys of the rule it replaces (quickstart sets mu) ...
    cfg = load_config(None, ["optimizer.name=adam", "schedule.name=step"])
    assert cfg.optimizer.params == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert cfg.schedule.params["warmup_epochs"] == 0.5  # ... and keeps what the new one takes
    with pytest.raises(ConfigError, match="optimizer.mu: adam does not take mu"):
        load_config(None, ["optimizer.mu=0.9", "optimizer.name=adam"])  # but never a --set key


@pytest.mark.parametrize("section,name", [("optimizer", n) for n in RULES]
                         + [("schedule", n) for n in SCHEDULES])
def test_every_rule_and_schedule_round_trips_through_the_saved_yaml(section, name, tmp_path):
    cfg = load_config("mnist", [f"{section}.name={name}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # Ray ships the Config to its workers


LEGACY = {  # the resolved sections distnn wrote before they passed through to distnn.optim
    "optimizer": {"name": "momentum", "mu": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-08,
                  "decay_rate": 0.99, "weight_decay": 0.0},
    "schedule": {"name": "cosine", "base_lr": 0.05, "per": "step", "drop": 0.5, "every": 10.0,
                 "gamma": 0.95, "k": 0.1, "total_epochs": 0.0, "min_lr": 0.0,
                 "warmup_epochs": 0.5, "warmup_start_factor": 0.1, "scale_lr": False,
                 "reference_batch": 256, "factor": 0.1, "patience": 5, "cooldown": 0},
}


def test_configs_saved_before_the_declarations_still_load():
    """A resolved config.yaml of an earlier distnn lists every rule's keys: the others' drop."""
    cfg = from_dict(LEGACY)
    assert cfg == from_dict({"optimizer": {"mu": 0.9}, "schedule": {
        "name": "cosine", "base_lr": 0.05, "warmup_epochs": 0.5}})
    assert schedule_spec(cfg)["total_epochs"] == cfg.train.epochs


def test_a_user_section_with_another_rules_key_is_still_refused():
    partial = {k: v for k, v in LEGACY["optimizer"].items() if k != "decay_rate"}
    with pytest.raises(ConfigError, match="optimizer.beta1: momentum does not take beta1"):
        from_dict({"optimizer": partial})


def test_section_defaults_follow_the_rule_named():
    assert OptimizerConfig(name="adam").params == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    adam = dataclasses.replace(load_config(None).optimizer, name="adam", params={})
    assert adam.params == OptimizerConfig(name="adam").params
    assert "gamma" in ScheduleConfig(name="exponential").params


@pytest.mark.parametrize("override", ["train.l2=inf", "comm.timeout=.inf",
                                      "train.divergence_factor=nan",
                                      "early_stopping.min_delta=-.inf"])
def test_non_finite_numbers_are_refused_where_they_enter(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}: .* is not a finite number$"):
        load_config(None, [override])
