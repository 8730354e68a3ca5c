"""The devices a run computes on: jax.distributed's peers, the `data` x `model` mesh
`config.mesh` asks for, where each leaf of the train state lives on it (`config.mesh.rules`),
and the global batch assembled from each process's part.

Batches are built per process and assembled into one global array split over `data`; the
train state is replicated, except the leaves `config.mesh.rules` shard (the widest layers
over `model`, or any leaf over `data`). XLA's SPMD partitioner inserts the collectives the
sharded layers need.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import jax
import numpy as np

from fergate.errors import UserError

log = logging.getLogger(__name__)


def setup_distributed(coordinator: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, auto: bool = False) -> None:
    """jax.distributed for multi-host runs: explicit peers (`coordinator`, e.g. processes on
    one CPU machine, with gloo collectives), or `auto` detection (TPU pods, SLURM)."""
    if coordinator or num_processes:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by the CPU backend only
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    elif auto:
        jax.distributed.initialize()


def make_mesh(model: int = 1) -> jax.sharding.Mesh:
    """A `data` x `model` mesh: `model` devices of one process hold each shard of the
    sharded layers (the fast interconnect of a host or a TPU slice's neighbours), `data`
    spans the rest, every process included."""
    local = jax.local_device_count()
    if model < 1 or local % model:
        raise UserError(f"config mesh.model={model}: the model axis must divide the {local} devices of each process "
                        f"(--config.mesh.model=1 runs without one)")
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((jax.device_count() // model, model), ("data", "model"), axis_types=(auto, auto))
    if any(len({d.process_index for d in row}) > 1 for row in mesh.devices.reshape(-1, model)):
        raise UserError(f"config mesh.model={model}: this platform's device order puts a model group on several "
                        "processes; use a model axis within one process's devices")
    return mesh


def config_mesh(config) -> tuple[jax.sharding.Mesh, tuple[str, ...]]:
    """The mesh `config.mesh` asks for and its sharding rules, both checked: a mesh this
    process cannot build and a malformed rule are one-line errors."""
    m = config.get("mesh", {})
    mesh, rules = make_mesh(m.get("model", 1)), tuple(m.get("rules", ()))
    parse_rules(rules, mesh)
    return mesh, rules


def leaf_name(path) -> str:
    """A pytree path as "params/sarnn/input/kernel" (dict keys, attributes, indices)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def parse_rules(rules: Sequence[str], mesh: jax.sharding.Mesh) -> list[tuple[re.Pattern, jax.P, str]]:
    """`config.mesh.rules` entries "REGEX=AXES": a leaf whose path ends in a match of REGEX
    gets the partition spec AXES, one mesh axis name per array dimension, "-" for none
    (e.g. "experts/kernel0=-,model,-"). The first matching rule wins."""
    out = []
    for rule in rules:
        pattern, sep, axes = rule.rpartition("=")
        pattern, spec = pattern.strip(), tuple(None if a.strip() in ("-", "") else a.strip() for a in axes.split(","))
        named = [a for a in spec if a is not None]
        bad = [a for a in named if a not in mesh.axis_names] or len(set(named)) != len(named)
        if pattern.startswith("params/"):
            raise UserError(f"config mesh.rules: {rule!r}: name the parameter's path within the parameters "
                            f"({pattern.removeprefix('params/')!r}), so that its optimizer moments match too")
        if not sep or not pattern or bad:
            raise UserError(f"config mesh.rules: {rule!r} is not REGEX=AXES with AXES among "
                            f"{', '.join(mesh.axis_names)} or - per dimension, each axis once "
                            "(e.g. 'experts/kernel0=-,model,-')")
        try:
            out.append((re.compile(f"(^|/)(?:{pattern})$"), jax.P(*spec), rule))
        except re.error as e:
            raise UserError(f"config mesh.rules: {rule!r}: {e}") from None
    return out


def state_shardings(mesh: jax.sharding.Mesh, abstract_state, rules: Sequence[str]):
    """The sharding of every leaf of a train state: the first rule whose pattern the leaf's
    path ends in (the optimizer's moments follow their parameters, whose paths they end
    in), else replicated. A rule whose axes do not fit the leaf (rank, a dimension not a
    multiple of the axis size) is a one-line error naming both."""
    parsed, sharded = parse_rules(rules, mesh), {}

    def one(path, x):
        name = leaf_name(path)
        for pattern, spec, rule in parsed:
            if pattern.search(name):
                if len(spec) != x.ndim or any(a and x.shape[i] % mesh.shape[a] for i, a in enumerate(spec)):
                    raise UserError(f"config mesh.rules: {rule!r} does not fit {name} {tuple(x.shape)} on a mesh of "
                                    f"{dict(mesh.shape)}")
                if name.startswith("params/"):
                    sharded[name.removeprefix("params/")] = spec
                return jax.NamedSharding(mesh, spec)
        return jax.NamedSharding(mesh, jax.P())

    shardings = jax.tree_util.tree_map_with_path(one, abstract_state)
    if any(a and mesh.shape[a] > 1 for spec in sharded.values() for a in spec):
        log.info(f"[mesh] {dict(mesh.shape)}: {len(sharded)} parameters sharded "
                 f"({', '.join(f'{k} {tuple(v)}' for k, v in sharded.items())})")
    return shardings


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Per-process batches -> one global batch sharded over the data axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

