"""A segmentation run as one lazy Ray Dataset, from its plan's shards to Parquet parts.

    plan shards -> read_blocks, prepare (CPU tasks: listing rows, then read, decode, letterbox)
            -> Segmenter (actor pool: one U-Net replica per actor, GPU if asked)
            -> finalize (CPU tasks: mask back to full size, palette PNG, statistics)
            -> write_parts (CPU tasks: one images + one class_stats Parquet part per batch, uncommitted)

The stages themselves are in `jobs.inference.stages`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import TypeVar

import pyarrow as pa

from jobs.cluster.capacity import ACTOR_RESTARTS, Resources
from jobs.inference.config import Inference, ReplicaConfig
from jobs.inference.model import ModelInfo
from jobs.inference.stages import Segmenter, finalize, prepare, write_parts
from jobs.output.plans import MAX_BLOCKS, Todo, blocks, read_blocks

MODES = ("letterbox", "tile")
"""How images meet the model: scaled whole into one input, or in full-resolution tiles."""
MASK_RESOLUTIONS = ("native", "model")
"""The size of the stored mask: its image's, or the model's (the part of the input the image filled)."""


Config = TypeVar("Config", bound=ReplicaConfig)


def with_model_mode(config: Config, model: ModelInfo) -> Config:
    """The job's config with `--mode` defaulted to the model's training mode, so that its run record
    says which mode ran."""
    return replace(config, mode=config.mode or model.mode)


def segmented_dataset(rows, model: ModelInfo, resources: Resources, inference: Inference):
    """A dataset of listing rows in, rows with each image's mask and confidence (in model space) out."""
    import ray

    prepared = rows.map_batches(
        prepare,
        batch_size=resources.batch_size,
        num_cpus=resources.cpus_per_task,
        fn_kwargs={
            "input_size": model.input_size,
            "max_pixels": inference.max_pixels,
            "max_bytes": inference.max_bytes,
            "tile": inference.tile_overlap is not None,
        },
    )
    with warnings.catch_warnings():
        # Ray Data restarts dead replicas and retries their batches without limit by default, and
        # names no parameter to bound it yet: the (deprecated) remote args are the only way.
        warnings.simplefilter("ignore", DeprecationWarning)
        return prepared.map_batches(
            Segmenter,
            batch_size=resources.batch_size,
            # all of MAX asked for at once: a pending replica is the demand that makes the autoscaler add
            # its node (a pool that grows only by measured load stays at one GPU replica, ray#59144)
            compute=ray.data.ActorPoolStrategy(
                min_size=resources.min_actors, max_size=resources.max_actors, initial_size=resources.max_actors
            ),
            num_cpus=resources.cpus_per_actor,
            num_gpus=resources.gpus_per_actor,
            fn_constructor_args=(model.uri, inference, resources.batch_size, max(1, round(resources.cpus_per_actor))),
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
            runtime_env={"env_vars": replica_env(resources.gpus_per_actor)},
        )


def replica_env(gpus: float) -> dict[str, str]:
    """Environment of each model replica. TensorFlow's log level goes from the driver (a worker on
    another node does not inherit it). A replica given no GPU sees none, so it neither initialises
    CUDA nor takes memory on GPUs Ray gave to others; Ray sets CUDA_VISIBLE_DEVICES itself in those
    it gives GPUs."""
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    return env if gpus else {**env, "CUDA_VISIBLE_DEVICES": ""}


def build_dataset(
    todo: Todo,
    model: ModelInfo,
    resources: Resources,
    inference: Inference,
    output: str,
    run_id: str,
    rows_per_file: int,
    mask_resolution: str = "native",
):
    """The whole run as one lazy Ray Dataset whose rows are the Parquet parts it wrote."""
    tasks = {"num_cpus": resources.cpus_per_task}
    return (
        segmented_dataset(plan_dataset(todo, resources), model, resources, inference)
        .map_batches(
            finalize,
            batch_size=resources.batch_size,
            fn_kwargs={"model": model, "native_masks": mask_resolution == "native"},
            **tasks,
        )
        .map_batches(
            write_parts,
            batch_size=rows_per_file,
            fn_kwargs={"output": output, "run_id": run_id, "model": model},
            **tasks,
        )
    )


def listing_dataset(listing: pa.Table, batch_size: int):
    """A listing the driver holds (an evaluation set) as a dataset."""
    import ray

    return ray.data.from_arrow(slices(listing, batch_size))


def plan_dataset(todo: Todo, resources: Resources):
    """A run's todo as a dataset: the driver hands out places in the plan's shards (`blocks`), and read
    tasks (fused with `prepare`) read the rows, so no row of the plan passes through the driver."""
    import ray

    pieces = blocks(todo, max(resources.batch_size, -(-todo.rows // MAX_BLOCKS)))
    return ray.data.from_arrow(slices(pieces, 1)).map_batches(
        read_blocks, batch_size=None, batch_format="pyarrow", num_cpus=resources.cpus_per_task
    )


def slices(listing: pa.Table, batch_size: int, max_blocks: int = MAX_BLOCKS) -> list[pa.Table]:
    """Cut the listing into blocks on the driver: a shuffle task would need a whole CPU that
    a small machine has already given to the actors."""
    rows = max(batch_size, -(-len(listing) // max_blocks))
    return [listing.slice(start, rows) for start in range(0, len(listing), rows)]
