"""The Ray cluster a sweep runs on: start or join it, and check it can run the trials.

docs/cluster.md says how to run a sweep on several nodes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from ..config import ConfigError, first_line
from ..workers import Workers
from .plan import SweepPlan


def start_ray(plan: SweepPlan) -> bool:
    """Start or join Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        _check_shipped(plan)
        return False
    given = plan.options.address
    address = given or os.environ.get("RAY_ADDRESS")
    _check_reachable(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if not address:
        kwargs["include_dashboard"] = False
    if plan.py_modules:  # the user's factory modules, importable in every worker of the job
        kwargs["runtime_env"] = {"py_modules": plan.py_modules}
    try:
        # "local": a Ray of its own, never a cluster that happens to run on this machine
        ray.init(address=given or (None if address else "local"), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = first_line(err)
        # Ray picks up its auth token for "auto" only; a host:port needs RAY_AUTH_MODE=token
        # set before Python starts (Ray reads it at import).
        hint = "" if not address or address == "auto" else (
            "; for a cluster with token authentication (Ray's default) set RAY_AUTH_MODE=token "
            "and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN, or use --address auto on "
            "one of its nodes")
        raise ConfigError(f"--address {address or 'local'}: cannot start or join Ray "
                          f"({first}){hint}") from None
    return True


@contextmanager
def ray_for(plan: SweepPlan, keep: bool = False) -> Iterator[None]:
    """Ray started or joined for ``plan``, its resources checked and the multi-node warnings
    printed; shut down on the way out if started here, unless ``keep``."""
    started = start_ray(plan)
    try:
        check_resources(plan)
        for line in multi_node_warnings(plan):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        yield
    finally:
        if started and not keep:
            ray.shutdown()


def _check_shipped(plan: SweepPlan) -> None:
    """Ray started by the caller: say so when its job does not ship the user's factory
    modules (workers on other machines would not find them)."""
    shipped = (ray.get_runtime_context().runtime_env or {}).get("py_modules")
    if plan.py_modules and not shipped:
        print(f"warning: Ray was started without the factories' code; workers on other "
              f"machines need ray.init(runtime_env={{'py_modules': {plan.py_modules!r}}}), "
              "or let layertune start Ray", file=sys.stderr, flush=True)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A host:port nobody answers at: say so now (``ray.init`` retries it for minutes)."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: use host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: nothing answers at {host}:{port} "
                          f"({err.strerror or err}); is the cluster up (ray start --head)?") \
            from None


def check_resources(plan: SweepPlan, nodes: list[dict] | None = None) -> None:
    """A trial asking for more than any node has would stay PENDING forever: refuse it.

    ``nodes``: the alive nodes' resource dicts (default: asked of the running Ray).
    """
    if nodes is None:
        nodes = _alive_nodes()
    if plan.options.workers is not None:
        _check_workers(plan.options.workers, nodes)
        return
    cpus, gpus = plan.options.cpus_per_trial, plan.options.gpus_per_trial
    if gpus > 0 and sum(n.get("GPU", 0) for n in nodes) == 0:
        raise ConfigError(f"--gpus-per-trial {gpus:g}: the Ray cluster has no "
                          "GPU; use --gpus-per-trial 0 or join a cluster with GPUs (--address)")
    need = {"CPU": cpus, "GPU": gpus}
    if not any(all(n.get(k, 0) >= v for k, v in need.items() if v > 0) for n in nodes):
        cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        raise ConfigError(
            f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no Ray node has that much "
            f"(largest: {cpu:g} CPU, {gpu:g} GPU)"
        )


def multi_node_warnings(plan: SweepPlan, nodes: int | None = None) -> list[str]:
    """What a cluster of several nodes needs that this sweep may not have.

    Trials checkpoint into the sweep folder from whichever node runs them, and a trial retried
    on another node reads its checkpoint back from there; the MLflow record is written by this
    driver, but a sqlite file next to it is only readable on this machine.
    """
    if nodes is None:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes < 2:
        return []
    lines = [] if plan.storage.remote else [
        f"the Ray cluster has {nodes} nodes: the sweep folder {plan.folder} must be shared "
        "storage every node mounts at that path (NFS or similar), or use --storage "
        "s3://BUCKET/PREFIX; on a node-local disk, trials on other nodes cannot save or "
        "restore checkpoints"]
    uri = plan.tracking_uri  # None: tracking is off
    if uri is not None and (uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        lines.append(f"the MLflow record ({plan.tracking_uri or 'sqlite in the sweep folder'})"
                     " is node-local: use an MLflow server (--tracking-uri http://HOST:5000) "
                     "to browse it from other machines")
    return lines


def resources_text() -> str:
    """What the running Ray has, e.g. ``8 CPU, 1 GPU``."""
    r = ray.cluster_resources()
    return f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU"


def _alive_nodes() -> list[dict]:
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def _worker_slots(workers: Workers, nodes: list[dict]) -> int:
    """How many workers of ``workers``' size the nodes hold at once."""
    need = {"CPU": workers.cpus, "GPU": workers.gpus}
    return sum(min(int(n.get(k, 0) // v) for k, v in need.items() if v > 0) for n in nodes)


def _check_workers(workers: Workers, nodes: list[dict]) -> None:
    """A trial's K workers must fit the cluster together (Ray Train starts all or none)."""
    slots = _worker_slots(workers, nodes)
    if slots < workers.count:
        raise ConfigError(
            f"--workers-per-trial {workers.count} --cpus-per-worker {workers.cpus:g} "
            f"--gpus-per-worker {workers.gpus:g}: the Ray cluster holds {slots} such workers "
            f"at once ({sum(n.get('CPU', 0) for n in nodes):g} CPU, "
            f"{sum(n.get('GPU', 0) for n in nodes):g} GPU in all)")


def max_concurrent(plan: SweepPlan, nodes: list[dict] | None = None) -> int | None:
    """``--max-concurrent``, or for trials on Ray Train workers as many as the cluster holds
    at once: every Tune trial that starts launches a Ray Train run, and one that cannot get
    its workers only waits (Ray's advice, docs/cluster.md)."""
    workers = plan.options.workers
    if plan.options.max_concurrent is not None or workers is None:
        return plan.options.max_concurrent
    return max(1, _worker_slots(workers, _alive_nodes() if nodes is None else nodes)
               // workers.count)
