"""Sizing work to the cluster: the replica layout it holds now or can grow to, and the bounded
wait for the nodes an autoscaler adds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jobs.common.errors import UserError
from jobs.common.private_apis import ray_cluster_config, ray_head_started_here


class PoolFlags(Protocol):
    """The command-line flags that size a pool of model replicas (segment and evaluate share them)."""

    actors: str
    cpus_per_actor: float | None
    gpus_per_actor: float
    batch_size: int


def plan_resources(config: PoolFlags) -> Resources:
    """Turn the flags into an actor-pool layout that the cluster holds now or can grow to.

    On an autoscaling cluster GPU workers often start at zero: the request itself is the plan, and
    `await_nodes` gives the autoscaler time to add them. Only a cluster that can never hold the
    request (Ray started by this process, or node types the autoscaler declares) is refused at once.
    """
    gpus = config.gpus_per_actor
    cpus = config.cpus_per_actor or (1.0 if gpus else max(0.5, largest_node_cpus() - 0.5))
    bundle = replica_bundle(cpus, gpus)
    if config.actors == "auto":
        # a CPU replica is counted with the task share that feeds it: a pool that took every CPU would
        # leave the read and decode tasks none, and the run would wait for them forever
        now, most = capacity(bundle if gpus else replica_bundle(cpus + TASK_CPUS, 0))
        low, high, settings = 1, max(1, most or now), replica_settings(config)
    else:
        (low, high), settings = actor_bounds(config.actors), ("actors",)
    check_holds(bundle, high, "replicas", *settings)
    return Resources(low, high, cpus, gpus, config.batch_size)


def capacity(bundle: dict[str, float]) -> tuple[int, int | None]:
    """How many bundles the cluster holds now, and at most (None: unknown, an autoscaler that does not
    declare its node types may add any)."""
    now = sum(fitting(bundle, node) for node in alive_nodes())
    declared = declared_node_types()
    if not (declared or started_here()):
        return now, None
    return now, max(now, sum(fitting(bundle, node) * count for node, count in declared))


def check_holds(bundle: dict[str, float], count: int, what: str, *settings: str) -> None:
    """Refuse at once what the cluster can never hold; `settings` are the config fields that asked for it."""
    _, most = capacity(bundle)
    if most is not None and count > most:
        raise UserError(
            f"{count} {what} asked for, only {most} of {describe(bundle)} fit on the cluster ({cluster_summary()})",
            *settings,
        )


def largest_node_cpus() -> float:
    nodes = alive_nodes() + [node for node, _ in declared_node_types()]
    return max((node.get("CPU", 0) for node in nodes), default=1)


def replica_settings(config: PoolFlags) -> tuple[str, ...]:
    """The fields that sized each replica, for an error about how many fit."""
    named = ("gpus_per_actor",) if config.gpus_per_actor else ()
    return named + (("cpus_per_actor",) if config.cpus_per_actor else ())


def replica_bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def fitting(bundle: dict[str, float], node: dict) -> int:
    """How many bundles one node of these total resources holds."""
    return min(int(node.get(name, 0) // amount) for name, amount in bundle.items())


def alive_nodes() -> list[dict]:
    """Total resources of each live node (what is there, busy or not)."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def declared_node_types() -> list[tuple[dict, int]]:
    """(resources, max count) of every node type the autoscaler may add. Autoscaler v2 reports
    them; v1 does not, and then only the request and the wait can tell."""
    config = ray_cluster_config()
    if config is None:
        return []
    return [
        (dict(group.resources), group.max_count if group.max_count >= 0 else 1024)
        for group in config.node_group_configs
    ]


def started_here() -> bool:
    """A Ray that this process started has no autoscaler: what it holds now is all it ever holds."""
    return ray_head_started_here()


def await_nodes(bundle: dict[str, float], count: int, timeout_s: float, what: str) -> None:
    """Wait until the cluster holds `count` bundles, asking the autoscaler for them.

    A placement group of the bundles is the demand the autoscaler acts on (v1 and v2); it is
    released as soon as it is placed, for the job's own actors, and it dies with the driver, so a
    crashed job leaves no standing request that keeps nodes up.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    if sum(fitting(bundle, node) for node in alive_nodes()) >= count:
        return
    print(
        f"waiting up to {timeout_s:g} s for the cluster to hold {count} {what} of {describe(bundle)} "
        f"({cluster_summary()})",
        flush=True,
    )
    group = placement_group([bundle] * count, strategy="PACK")
    try:
        if not group.wait(timeout_seconds=timeout_s):
            raise UserError(
                f"waited {timeout_s:g} s for {count} {what} of {describe(bundle)} and the cluster never held them "
                f"({cluster_summary()}): check the autoscaler's node types, "
                "max workers and cloud quota, or ask for less or wait longer",
                "wait_for_nodes",
            )
    finally:
        remove_placement_group(group)


def describe(bundle: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def cluster_summary() -> str:
    alive, declared = alive_nodes(), declared_node_types()

    def total(name: str) -> float:
        return sum(node.get(name, 0) for node in alive)

    def shape(node: dict) -> str:
        return describe({name: node.get(name, 0) for name in ("CPU", "GPU")})

    now = f"now {len(alive)} nodes with {total('CPU'):g} CPUs and {total('GPU'):g} GPUs"
    types = ", ".join(f"up to {count} x {shape(node)}" for node, count in declared)
    return f"{now}; the autoscaler's node types: {types}" if declared else now


TASK_CPUS = 0.5
"""CPUs of each decode, post-processing and write task: a fraction, so reads never starve beside the actors."""
ACTOR_RESTARTS = 4
"""A replica that dies (OOM, node loss, crash) is restarted and its batch retried this many times."""


@dataclass(frozen=True)
class Resources:
    """How the run is laid out on the cluster."""

    min_actors: int
    max_actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int
    cpus_per_task: float = TASK_CPUS


def actor_bounds(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    return int(low), int(high or low)


STAGES = ("read", "decode", "model", "postprocess", "write")
"""A run's stages, as its `runs` row and progress line time them (`<stage>_seconds`)."""
CPU_STAGES = ("read", "decode", "postprocess", "write")


def spare_cpus_per_replica(resources: Resources) -> float:
    """The cluster's CPUs that no replica reserves, per replica: what reads, decodes and encodes for each."""
    cpus = sum(node.get("CPU", 0.0) for node in alive_nodes())
    return max(0.0, cpus - resources.max_actors * resources.cpus_per_actor) / resources.max_actors


@dataclass(frozen=True)
class Bound:
    """Which stage limits a run: the model, or the CPU stage that costs most when the CPU side of each
    image needs more CPUs per replica than the cluster has to spare."""

    stage: str
    cpus_per_replica: float
    """CPU-seconds of the CPU stages per second of a replica's model time: the CPUs that keep one busy."""
    spare: float

    def line(self) -> str:
        need = f"{self.cpus_per_replica:.2g} CPUs per replica keep it busy, {self.spare:.2g} are spare"
        return f"bound by the model ({need})" if self.stage == "model" else f"bound by {self.stage}: {need}"


def bound(seconds: dict[str, float], spare: float | None) -> Bound | None:
    """None until the pool is laid out (`spare` known) and the model has run."""
    if spare is None or seconds.get("model", 0.0) <= 0:
        return None
    need = sum(seconds.get(stage, 0.0) for stage in CPU_STAGES) / seconds["model"]
    return Bound("model" if need <= spare else max(CPU_STAGES, key=lambda s: seconds.get(s, 0.0)), need, spare)
