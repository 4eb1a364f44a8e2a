"""What the Ray driver (ray_driver.py) says about a worker group: where it landed and the
transport its communicators chose, why a worker died, where a restart resumes; and the one
placement a driver refuses (comm.transport=shm across nodes)."""

from __future__ import annotations

from pathlib import Path

from distnn.comm.ray_cluster import BadInput
from distnn.config import Config


def check_transport(cfg: Config, infos: list[dict]) -> None:
    """BadInput for comm.transport=shm on workers of several nodes: each rank's communicator
    would abort at its first collective (and Ray would echo every rank's message)."""
    nodes = {info["node_id"] for info in infos}
    if cfg.comm.transport == "shm" and len(nodes) > 1:
        raise BadInput(f"comm.transport=shm needs every rank on one x86-64 node, but the "
                       f"{len(infos)} workers are on {len(nodes)} nodes; use comm.transport=auto "
                       f"(shared memory when they share one, else the object store) or "
                       f"object_store")


def placement(infos: list[dict], transports: list[str]) -> str:
    """The group line: its nodes (from the actors' `info`) and the transport that the
    communicators chose at their first collective (returned by every actor's `connect`), e.g.
    "3 workers on 2 nodes (node ids 9f1c2a7b.., 04de88c1..), transport object_store"."""
    nodes = list(dict.fromkeys(str(i.get("node_id")) for i in infos))  # in rank order
    s = "s" if len(nodes) > 1 else ""
    line = (f"{len(infos)} worker{'s' * (len(infos) > 1)} on {len(nodes)} node{s} (node id{s} "
            f"{', '.join(n[:8] + '..' for n in nodes)}), ")
    if len(infos) == 1:
        return line + "no transport (one worker)"
    return line + "transport " + ", ".join(sorted(set(transports)))  # one: decided together


def resume_point(run_dir: Path | str) -> str:
    """What `--resume auto` will start from, for the restart log line."""
    if isinstance(run_dir, str):  # a URL: the next group's rank 0 reads the store
        return f"{run_dir}/checkpoints/last.h5 (or the newest step file that verifies)"
    folder = run_dir / "checkpoints"
    if (folder / "last.h5").exists():
        return f"{folder / 'last.h5'} (or the newest step file that verifies)"
    if any(folder.glob("step-*.h5")):
        return f"the newest step file in {folder} that verifies"
    return "the start (no checkpoint yet)"


def death_reason(exc: Exception) -> str:
    """The first sentence of Ray's explanation, e.g. "The actor is dead because its worker
    process has died." plus its exit type, kept to one short line."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].strip()
    kind = ""
    if "Worker exit type:" in text:
        kind = "; " + text[text.index("Worker exit type:"):].split(" Worker exit detail")[0]
    return f" ({first[:160]}{kind[:60]})" if first else ""

