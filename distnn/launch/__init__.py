"""Starting a run: the `distnn train` / `distnn evaluate` commands, the run directory decision,
the worker entry every backend runs (`run_worker`), and the Ray driver.

Arrows: launch imports train, comm, config and data; nothing below imports launch.
"""
