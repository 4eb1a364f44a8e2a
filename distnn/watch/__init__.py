"""Watching training: per-step and per-layer telemetry, warnings, the trace timeline, TensorBoard,
and the `distnn summary / sanity / plot / trace` commands."""
