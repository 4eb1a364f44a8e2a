"""The few exceptions of distnn.nn. Each message names the layer, the value and what was
expected."""


class SpecError(ValueError):
    """A layer spec (a plain dict from a config) is invalid: unknown type, bad key or value."""


class ShapeError(ValueError):
    """An input or parameter has the wrong shape or dtype, or an output size is not integral."""


class StateError(ValueError):
    """A state dict does not match the model: missing, extra or misshapen arrays."""
