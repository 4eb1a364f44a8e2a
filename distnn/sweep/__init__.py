"""Hyper-parameter sweeps (`distnn sweep`): random search in log space, coarse to fine stages,
ASHA and divergence kills, cross-validation; trials are ordinary run directories. See
sweep/commands.py for the directory layout and sweep/records.py for trials.jsonl."""
