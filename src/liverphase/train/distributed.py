"""DDP plumbing for `torchrun --nproc_per_node=N`: process group, rank facts, gathering, barriers.

Everything degrades to a no-op in a single process, so the trainer and `train`/`cv` have one code
path. Under torchrun every rank runs the same command: inputs are validated before `join_group`
(a bad input then fails alike on every rank, with no group to hang), rank 0 alone writes files
(`on_main`), and a step any rank may fail (preprocessing, writing) shares its outcome, so the other
ranks stop with the same one-line error instead of waiting at a barrier until the timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from liverphase.errors import ConfigError, LiverphaseError, os_error_message
from liverphase.models.registry import ModelOutput

T = TypeVar("T")

# Collectives wait this long (minutes) for a slow rank: rank 0 preprocessing a large cohort into an
# empty cache, or writing a bootstrapped report, holds the others at a barrier. torch's defaults
# (10 min NCCL, 30 min gloo) are shorter than a first preprocessing of a few hundred studies.
TIMEOUT_ENV = "LIVERPHASE_DDP_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120.0


def launch_facts() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them in the environment; (0, 1, 0) plainly."""
    env = os.environ
    return (
        int(env.get("RANK", "0")),
        int(env.get("WORLD_SIZE", "1")),
        int(env.get("LOCAL_RANK", "0")),
    )


def check_launch(batch_size: int | None = None) -> None:
    """Refuse, before any group exists, a launch the run cannot use: a global batch that does not
    split evenly over the processes, or more processes on this node than it has GPUs."""
    _, world, local = launch_facts()
    if batch_size is not None and batch_size % world:
        raise ConfigError(
            f"batch size {batch_size} does not split over {world} processes: choose a multiple "
            f"of {world} (the batch size is global; each process takes batch_size / {world})",
            "batch_size",
        )
    if world > 1 and torch.cuda.is_available() and local >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start at "
            "most that many processes per node (--nproc_per_node)",
            "--nproc_per_node",
        )


def join_group(batch_size: int | None = None) -> torch.device | None:
    """Join the process group torchrun describes (no-op without one, or when joined already):
    NCCL with device cuda:LOCAL_RANK when CUDA is available, else gloo on the CPU. Returns the
    device (None in a single process: the caller's default)."""
    check_launch(batch_size)
    rank, world, local = launch_facts()
    if world <= 1:
        return None
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the trainer's default device is the current one
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=minutes),
            rank=rank,
            world_size=world,
        )
    return device


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def torchrun_session() -> Iterator[None]:
    """Leave the process group when the block ends, however it ends (a no-op without one)."""
    try:
        yield
    finally:
        cleanup()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes files (rank 0)."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _failure(exc: BaseException | None) -> tuple[bool, str] | None:
    """(is it the user's to fix, its one line) of a failure, for the other ranks; None if none."""
    if exc is None:
        return None
    if isinstance(exc, LiverphaseError):
        return True, str(exc)
    if isinstance(exc, OSError) and os_error_message(exc) is not None:
        return True, str(os_error_message(exc))
    return False, f"{type(exc).__name__}: {exc}"


def _settle(mine: bool, fn: Callable[[], T], share: bool) -> T | None:
    """Run `fn` where `mine`; then every rank learns every rank's failure (raising the same user
    error, so each prints the same one line) and, with `share`, rank 0's value."""
    value, error = None, None
    if mine:
        try:
            value = fn()
        except Exception as exc:  # told to the other ranks first, then raised here unchanged
            error = exc
    told = gather_objects((_failure(error), value if share else None))
    if error is not None:
        raise error
    for rank, (failure, _) in enumerate(told):
        if failure is not None:
            user, line = failure
            if user:
                raise LiverphaseError(line)
            raise RuntimeError(f"rank {rank} failed: {line}")
    return told[0][1] if share else value


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run by rank 0 alone (it writes the files), its result on every rank."""
    if not is_distributed():
        return fn(*args, **kwargs)
    return _settle(is_main(), lambda: fn(*args, **kwargs), share=True)  # type: ignore[return-value]


def in_turn(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on rank 0 first, then on the first process of each other node, then on
    the rest, each returning its own result: preprocessing fills a shared cache once and the
    others find it built (a node-local cache is filled once per node, never by two at a time)."""
    if not is_distributed():
        return fn(*args, **kwargs)
    local = launch_facts()[2]
    turn = 0 if is_main() else 1 if local == 0 else 2
    result = None
    for stage in range(3):
        done = _settle(stage == turn, lambda: fn(*args, **kwargs), share=False)
        if stage == turn:
            result = done
    return result  # type: ignore[return-value]


def padded_share(n: int, batch_size: int, step: int, local: int) -> tuple[list[int], float]:
    """Which of this rank's `local` items at `step` of an epoch over `n` cases are real, and the
    factor that makes their mean loss this rank's share of the global batch mean.

    DistributedSampler deals rank r the positions r, r + world, ... of one seeded permutation,
    padded with repeats to a multiple of the world size; with a local batch of batch_size / world,
    step s covers global positions [s·batch_size, (s+1)·batch_size), the one-process batch s. DDP
    averages the ranks' gradients, so (mean over the real items) × n_real × world / n_step gives
    exactly the one-process batch mean, repeats excluded (factor 1 unless the step is short).
    """
    rank, world = rank_world()
    first = step * batch_size
    keep = [j for j in range(local) if first + j * world + rank < n]
    return keep, len(keep) * world / min(batch_size, n - first)


def real_loss(
    loss_fn: Callable[[ModelOutput, dict[str, Any]], torch.Tensor],
    out: ModelOutput,
    batch: dict[str, Any],
    keep: list[int],
) -> torch.Tensor:
    """`loss_fn` over the batch items in `keep` (all but the sampler's repeats); with none kept, a
    zero on the usual loss graph: DDP then reduces every parameter that forward reached, as on the
    ranks with real items (a zero on fewer outputs leaves their all-reduce waiting forever)."""
    if len(keep) == len(out.logits):
        return loss_fn(out, batch)
    if not keep:
        return loss_fn(out, batch) * 0.0
    idx = torch.tensor(keep)
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    part = ModelOutput(**{k: None if v is None else v[idx.to(v.device)] for k, v in fields.items()})
    return loss_fn(part, {k: v[idx] if torch.is_tensor(v) else v for k, v in batch.items()})


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` inside DistributedDataParallel in a process group, else unchanged."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Ablation switches may leave parameters unused; the extra graph walk this costs is small
    # next to 3D convolutions (static_graph=True, the cheaper route, trained wrongly here).
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
