"""Reaching a Ray cluster from a driver (`distnn train --backend ray`, `distnn sweep --backend
ray`): one clear line when it cannot be reached."""

from __future__ import annotations

import logging
import socket
import sys

import ray


class BadInput(Exception):
    """A problem with the user's request to the Ray driver: one line, exit code 2."""


def log(message: str) -> None:
    sys.stderr.write(f"distnn[ray]: {message}\n")
    sys.stderr.flush()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (BadInput) when a host:port Ray address does not accept TCP connections;
    ray.init would otherwise retry for a long time."""
    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        target = address[len("ray://"):] if address.startswith("ray://") else None
        if not target:
            return
    else:
        target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BadInput(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                       f"(is `ray start --head` running there?)") from None


def connect(address: str | None) -> None:
    """ray.init on `address`, or on a new local Ray when None."""
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, RuntimeError, ...
            raise BadInput(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        return
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
