"""The one-line errors of the hyper-parameter and argument checks: where, key, the value as the
user wrote it (a NumPy scalar as its plain number), and what was expected; BadValue.key and
.detail as distnn.config repeats them."""

import numpy as np
import pytest

from distnn.optim import (
    REQUIRED,
    AdamW,
    BadValue,
    Constant,
    Cosine,
    HParam,
    LinearWarmup,
    Momentum,
    ReduceOnPlateau,
    StepDecay,
    make_optimizer,
    resolve_for,
    scaled_lr,
)


class Record:
    """Not a number, but has an `item` attribute (as some containers do) and no `ndim`."""

    item = "field"

    def __repr__(self):
        return "Record()"


class DtypeOnly:
    """Has a dtype but no shape: not an array."""

    dtype = np.dtype(np.float32)


@pytest.mark.parametrize("value,shown,detail", [
    (np.float64(1.5), "1.5", "1.5 must be in [0, 1)"),
    (np.float32(-0.5), "-0.5", "-0.5 must be in [0, 1)"),
    (np.array([0.5]), "array([0.5])", "array([0.5]) is not a number"),
    ("0.9", "'0.9'", "'0.9' is not a number"),
    (Record(), "Record()", "Record() is not a number"),
])
def test_a_bad_value_is_shown_as_written(value, shown, detail):
    with pytest.raises(BadValue) as err:
        make_optimizer("momentum", mu=value)
    assert str(err.value) == f"momentum: mu={shown}, expected a number in [0, 1)"
    assert (err.value.key, err.value.detail) == ("mu", detail)


def test_an_unbounded_number_message_has_no_trailing_space():
    with pytest.raises(BadValue) as err:
        ReduceOnPlateau(base_lr=1.0).load_state_dict(
            {"current": 1.0, "best": float("inf"), "has_best": 1, "bad": 0, "cooling": 0})
    assert str(err.value) == "plateau.load_state_dict: best=inf, expected a finite number"
    assert err.value.detail == "inf is not a finite number"


@pytest.mark.parametrize("value,message,detail", [
    (2.5, "plateau: patience=2.5, expected an integer >= 0", "2.5 is not an integer"),
    ("3", "plateau: patience='3', expected an integer >= 0", "'3' is not an integer"),
    (True, "plateau: patience=True, expected an integer >= 0", "True is not an integer"),
    (np.float64(2.0), "plateau: patience=2.0, expected an integer >= 0",
     "2.0 is not an integer"),
    (-1, "plateau: patience=-1, expected an integer >= 0", "-1 must be >= 0"),
])
def test_an_integer_key_names_the_wrong_kind_apart_from_the_wrong_range(value, message, detail):
    with pytest.raises(BadValue) as err:
        resolve_for("schedule", "plateau", {"patience": value})
    assert str(err.value) == message
    assert (err.value.key, err.value.detail) == ("patience", detail)


def test_a_decay_mask_that_is_not_an_array_is_named_by_its_type():
    for mask, desc in [(DtypeOnly(), "DtypeOnly"), ([1, 0], "list"),
                       (np.ones((2, 2)), "float64[2, 2]"), (np.array(["a"]), "<U1[1]")]:
        with pytest.raises(ValueError) as err:
            AdamW(decay_mask=mask)
        assert str(err.value) == (f"adamw: decay_mask is {desc}, expected a 1-D array of 0 "
                                  "and 1 the size of the parameters")


def test_step_names_what_it_was_given_instead_of_arrays():
    with pytest.raises(ValueError) as err:
        make_optimizer("sgd").step(DtypeOnly(), np.zeros(2), 0.1)
    assert str(err.value) == (
        "sgd.step: params DtypeOnly and grads float64[2]; expected two 1-D float arrays of one "
        "shape and dtype, params writable")


def test_a_negative_epoch_is_named_by_the_schedule():
    with pytest.raises(BadValue) as err:
        StepDecay().lr(0, -1)
    assert str(err.value) == "step.lr: epoch=-1.0, expected a finite number >= 0"
    with pytest.raises(BadValue) as err:
        Cosine(total_epochs=3).lr(0, np.float64(-0.5))
    assert str(err.value) == "cosine.lr: epoch=-0.5, expected a finite number >= 0"


def test_scaled_lr_values_and_bounds():
    assert scaled_lr(0.1, 512) == 0.2
    assert scaled_lr(0.5, 1, 2) == 0.25  # one image per step is a valid global batch
    assert scaled_lr(0.5, 3, 1) == 1.5  # and one a valid reference batch
    assert scaled_lr(np.float32(0.5), np.int64(4), np.int64(8)) == 0.25


@pytest.mark.parametrize("args,message,key", [
    ((0.0, 256), "scaled_lr: base_lr=0.0, expected a finite number > 0", "base_lr"),
    ((0, 256), "scaled_lr: base_lr=0.0, expected a finite number > 0", "base_lr"),
    ((-0.1, 256), "scaled_lr: base_lr=-0.1, expected a finite number > 0", "base_lr"),
    ((0.1, 0), "scaled_lr: global_batch=0, expected an integer >= 1", "global_batch"),
    ((0.1, 64.0), "scaled_lr: global_batch=64.0, expected an integer >= 1", "global_batch"),
    ((0.1, 64, 0), "scaled_lr: reference_batch=0, expected an integer >= 1", "reference_batch"),
    ((0.1, 64, -256), "scaled_lr: reference_batch=-256, expected an integer >= 1",
     "reference_batch"),
])
def test_scaled_lr_rejects_naming_the_argument(args, message, key):
    with pytest.raises(BadValue) as err:
        scaled_lr(*args)
    assert str(err.value) == message
    assert err.value.key == key


def test_warmup_constructor_checks():
    with pytest.raises(ValueError) as err:
        LinearWarmup("constant", 2.0)
    assert str(err.value) == ("warmup: inner='constant', expected a schedule with "
                              "lr(step, epoch)")
    for w, shown in [(0, "0.0"), (0.0, "0.0"), (-1, "-1.0")]:
        with pytest.raises(BadValue) as err:
            LinearWarmup(Constant(), w)
        assert str(err.value) == f"warmup: warmup_epochs={shown}, expected a finite number > 0"
        assert err.value.key == "warmup_epochs"
    with pytest.raises(BadValue) as err:
        LinearWarmup(Constant(), 2.0, 1.5)
    assert str(err.value) == "warmup: warmup_start_factor=1.5, expected a number in [0, 1]"
    assert err.value.key == "warmup_start_factor"


def test_warmup_rejects_a_negative_epoch_during_warmup():
    # Constant itself ignores the epoch, so the check is the warmup's own.
    w = LinearWarmup(Constant(base_lr=1.0), 2.0)
    for epoch, shown in [(-0.5, "-0.5"), (np.float64(-1.0), "-1.0")]:
        with pytest.raises(BadValue) as err:
            w.lr(0, epoch)
        assert str(err.value) == f"warmup.lr: epoch={shown}, expected a finite number >= 0"
        assert err.value.key == "epoch"


def test_warmup_rejects_a_non_number_epoch_after_warmup_too():
    # The check comes before the comparison with the warmup length: a string is a BadValue naming
    # it, not a TypeError from `"3" >= 2.0`.
    w = LinearWarmup(Constant(base_lr=1.0), 2.0)
    with pytest.raises(BadValue) as err:
        w.lr(0, "3")
    assert str(err.value) == "warmup.lr: epoch='3', expected a finite number >= 0"


def test_a_0d_array_counts_as_the_number_it_holds():
    # show() prints array(0.5) as 0.5, so "mu=0.5, expected a number in [0, 1)" would be a
    # contradiction: such a value is taken as the number.
    assert make_optimizer("momentum", mu=np.array(0.5)).mu == 0.5
    with pytest.raises(BadValue) as err:
        make_optimizer("momentum", mu=np.array(1.5))
    assert str(err.value) == "momentum: mu=1.5, expected a number in [0, 1)"


def test_required_shows_as_required():
    assert repr(REQUIRED) == "REQUIRED"
    assert repr(HParam("total_epochs")) == (
        "HParam(key='total_epochs', default=REQUIRED, low=None, high=None, low_open=False, "
        "high_open=False, integer=False, choices=())")


def test_keys_lists_the_declared_hyper_parameters_in_order():
    assert Momentum.keys() == ("mu",)
    assert AdamW.keys() == ("beta1", "beta2", "eps", "weight_decay")
    assert Cosine.keys() == ("base_lr", "total_epochs", "min_lr")
    assert make_optimizer("sgd").keys() == ()


def test_adam_betas_are_declared_in_0_to_1_half_open_with_their_defaults():
    # The declaration helper itself (it runs when adam.py is imported): each beta is named by
    # its key, has its default, and refuses 1 with the exact message.
    from distnn.optim.adam import Adam, _beta
    for key, default in (("beta1", 0.9), ("beta2", 0.999)):
        p = _beta(key, default)
        assert p == HParam(key, default, low=0.0, high=1.0, high_open=True)
        assert p.check("adam", 0.0) == 0.0
        with pytest.raises(BadValue) as err:
            p.check("adam", 1.0)
        assert str(err.value) == f"adam: {key}=1.0, expected a number in [0, 1)"
        assert err.value.key == key
    assert Adam.hparams[:2] == (_beta("beta1", 0.9), _beta("beta2", 0.999))


def test_open_bounds_and_unknown_names_are_spelled_out():
    from distnn.optim._check import number
    with pytest.raises(BadValue) as err:
        number("w", "k", 5.0, low=0.0, high=1.0, low_open=True)
    assert str(err.value) == "w: k=5.0, expected a number in (0, 1]"
    with pytest.raises(BadValue) as err:
        number("w", "k", 5.0, high=1.0, high_open=True)
    assert str(err.value) == "w: k=5.0, expected a finite number < 1"
    with pytest.raises(ValueError) as err:
        make_optimizer("nope")
    assert str(err.value) == ("optimizer 'nope' is unknown; expected one of sgd, momentum, "
                              "nesterov, adagrad, rmsprop, adam, adamw, lbfgs")
    with pytest.raises(BadValue) as err:
        HParam("mode", "min", choices=("min", "max")).check("where", "avg")
    assert str(err.value) == "where: mode='avg', expected one of min, max"
