"""The exceptions of distnn.train."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or belongs to a different model/config."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded the configured multiple of the initial loss."""


class ReplicaMismatch(RuntimeError):
    """The model replicas on different ranks no longer hold identical parameters."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoint is intact."""
