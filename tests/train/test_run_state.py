"""RunState.from_json: the coordinator state read back from a checkpoint's JSON."""

from __future__ import annotations

from distnn.train.state import EarlyStopping, RunState


def test_early_stopping_state_is_restored():
    data = {"step": 9, "epoch": 2, "lr_scale": 0.25, "rollbacks": 1,
            "early": {"mode": "max", "patience": 2, "min_delta": 0.5, "best": 0.75,
                      "best_epoch": 1, "bad_epochs": 1}}
    state = RunState.from_json(data)
    assert state.early == EarlyStopping(mode="max", patience=2, min_delta=0.5, best=0.75,
                                        best_epoch=1, bad_epochs=1)
    assert (state.step, state.epoch, state.lr_scale, state.rollbacks) == (9, 2, 0.25, 1)
    assert isinstance(data["early"], dict)  # the input is not changed


def test_missing_early_stopping_state_gets_the_defaults():
    state = RunState.from_json({"step": 4})
    assert state.step == 4
    assert state.early == EarlyStopping(mode="min", patience=5, min_delta=0.0, best=None,
                                        best_epoch=-1, bad_epochs=0)
