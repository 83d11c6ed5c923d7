"""Several processes on one search: torch.distributed for secateur's retraining, and worker pools.

Launched by ``torchrun --nproc-per-node N -m secateur prune ...``, every process (a *rank*) runs
the same search; this module is all the rest of secateur knows of that:

* the process group: :func:`session` initialises it from torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) once, keeps it for the rest of
  the process and leaves it at exit. Backend: gloo on a CPU-only machine; with a GPU,
  ``cpu:gloo,cuda:nccl`` (nccl for CUDA tensors, gloo for the small CPU messages), one GPU per rank
  (``cuda:LOCAL_RANK``);
* who is who: :func:`rank`, :func:`world_size`, :func:`active`, :func:`is_writer` (rank 0, the
  only rank that writes files);
* agreement, always rank 0's: :func:`agree` (a JSON value), :func:`writer_outcome` (an evaluator
  run on rank 0 only, its result broadcast), :func:`sync_module` (rank 0's weights, masks and
  buffers copied into every rank's model, after checking that every rank's structure and plan
  match), :func:`writer_only` / :func:`writer_context` (work done by rank 0 alone, its errors
  raised on every rank);
* data-parallel training: :class:`DataParallel` (DistributedDataParallel, and the seeded,
  epoch-dependent shard of the training split each rank trains on) and :func:`prune_hooks` (what
  :func:`secateur.prune` wraps so every rank makes the same decisions);
* :func:`parallel_map`: independent tasks in spawned worker processes (``secateur sweep --workers``).

Messages between ranks are JSON and plain tensors, never pickles.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from secateur import errors
from secateur.arguments import expect_instance
from secateur.errors import ConfigError, SecateurError
from secateur.provenance import recorded_plan
from secateur.search.acceptance import Outcome
from secateur.search.pruner import Evaluate, Level, Pruner, PrunerState, Retrain
from secateur.zoo.data import Dataset, Split

if TYPE_CHECKING:  # train.py imports this module
    from secateur.train import TrainConfig

T = TypeVar("T")
R = TypeVar("R")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets for env://


class DistributedError(SecateurError):
    """The ranks of a distributed run disagree (a model or plan differs), or it was launched wrongly."""


# ----------------------------------------------------------------------------- the process group


def launched(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a launcher (torchrun) started this process as one of several (``WORLD_SIZE`` > 1)."""
    env = os.environ if environ is None else environ
    text = env.get("WORLD_SIZE", "1") or "1"
    try:
        return int(text) > 1
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be a whole number (torchrun sets it), got {text!r}") from None


def active() -> bool:
    """Whether this process is one rank of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a distributed run)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """How many processes share the run (1 outside a distributed run)."""
    return dist.get_world_size() if active() else 1


def local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 when not launched)."""
    env = os.environ if environ is None else environ
    return int(env.get("LOCAL_RANK", "0") or 0)


def is_writer() -> bool:
    """Whether this process writes files: rank 0 (or the only process)."""
    return rank() == 0


def default_backend() -> str:
    """gloo on CPU; with CUDA, nccl for CUDA tensors and gloo for CPU ones."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def session(enabled: bool | None = None, backend: str | None = None) -> Iterator[bool]:
    """Run the block as one rank of several when launched so; yields whether it is.

    ``enabled`` None (auto) or True: use the initialised process group, else initialise one from
    torchrun's environment when ``WORLD_SIZE`` > 1 (kept for the rest of the process, which torchrun
    started for this run, and left at exit); without that environment the process works alone (a
    world of one). False: always alone.
    """
    expect_instance(enabled, bool, "distributed", "True or False")
    if enabled is False or not dist.is_available():
        yield False
        return
    if dist.is_initialized():
        yield active()
        return
    if not launched():
        yield False
        return
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with "
                          "'torchrun --nproc-per-node N -m secateur ...'")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend or default_backend())
    atexit.register(_leave)  # the group serves every later call: joining a torchrun group twice could hang
    yield active()


def _leave() -> None:
    """Leave the process group at exit, once any DDP wrapper in a reference cycle is gone."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- messages from rank 0


def _comm_device() -> torch.device:
    """Where message tensors live: the GPU for a pure nccl group, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_bytes(payload: bytes) -> bytes:
    """Rank 0's ``payload`` on every rank (two broadcasts: its length, then its bytes)."""
    device = _comm_device()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    data = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device) if is_writer() and payload
            else torch.zeros(int(size.item()), dtype=torch.uint8, device=device))
    if int(size.item()):
        dist.broadcast(data, 0)
    return bytes(data.cpu().numpy().tobytes())


def agree(value: T) -> T:
    """Rank 0's ``value`` (JSON) on every rank, decoded the same way on each, rank 0 included;
    ``value`` itself outside a distributed run."""
    if not active():
        return value
    payload = json.dumps(value).encode() if is_writer() else b""
    return json.loads(_broadcast_bytes(payload))


def all_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (one all-reduce)."""
    if not active():
        return ok
    flag = torch.tensor([int(ok)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _error_record(error: SecateurError) -> dict:
    return {"error": type(error).__name__, "message": str(error)}


def _raise_record(record: Mapping[str, Any]) -> None:
    """Raise on this rank the SecateurError rank 0 raised."""
    kind = getattr(errors, str(record["error"]), None)
    if kind is None and record["error"] == DistributedError.__name__:
        kind = DistributedError
    if not (isinstance(kind, type) and issubclass(kind, SecateurError)):
        kind = DistributedError
    raise kind(str(record["message"]))


def writer_only(work: Callable[[], T]) -> T | None:
    """``work()`` on rank 0 alone (checks that may write, such as a folder probe); its result there,
    None elsewhere. A SecateurError it raises is raised on every rank, so none waits for rank 0."""
    if not active():
        return work()
    value, record = None, None
    if is_writer():
        try:
            value = work()
        except SecateurError as error:
            record = _error_record(error)
            agree(record)
            raise
    record = agree(record)
    if record is not None:
        _raise_record(record)
    return value


@contextmanager
def writer_context(enter: Callable[[], AbstractContextManager[T]]) -> Iterator[T | None]:
    """Enter ``enter()`` on rank 0 alone (e.g. claiming the run folder), once every rank has
    finished reading what it may change; yields its value there and None elsewhere. A
    SecateurError on entering is raised on every rank. The block ends on every rank once rank 0
    has left the context (a claimed folder is marked finished before any rank reads it again)."""
    if not active():
        with enter() as value:
            yield value
        return
    dist.barrier()
    with contextlib.ExitStack() as stack:
        yield writer_only(lambda: stack.enter_context(enter()))
    dist.barrier()  # not reached by a failing block: it raises on every rank without waiting


# ----------------------------------------------------------------------------- identical models


def _layout(model: nn.Module) -> dict:
    """What must match on every rank: each state tensor's name, shape and dtype, and the plan."""
    state = model.state_dict()
    return {"tensors": [[name, list(t.shape), str(t.dtype)] for name, t in state.items()],
            "plan": recorded_plan(model)}


def state_sha256(model: nn.Module) -> str:
    """A sha256 of every state tensor (weights, masks, buffers) of ``model``: equal on every rank."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sync_module(model: nn.Module, what: str = "model", buffers_only: bool = False) -> None:
    """Make ``model`` rank 0's on every rank: its structure and plan are checked against rank 0's
    (a DistributedError on every rank if one differs), then its tensors are broadcast in place."""
    if not active():
        return
    mine = json.loads(json.dumps(_layout(model)))
    if not all_agree(agree(mine) == mine):
        raise DistributedError(f"the {what} differs between ranks (tensor shapes or structured plan); "
                               "every rank must prune and train the same model deterministically")
    tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:  # state_dict tensors share their parameters' and buffers' storage
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    for group in groups.values():
        _broadcast_group(group)


@torch.no_grad()
def _broadcast_group(tensors: list[torch.Tensor]) -> None:
    """Broadcast same-dtype tensors from rank 0 as one flat buffer and copy it back into them."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    wire = flat.view(torch.uint8) if flat.dtype == torch.bool else flat
    dist.broadcast(wire, 0)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def writer_outcome(evaluate: Evaluate, source: str = "evaluate") -> Evaluate:
    """``evaluate`` run on rank 0 alone; its accuracy or per-example tensor broadcast to every rank
    (identical weights everywhere: one evaluation decides for all)."""
    if not active():
        return evaluate

    def on_rank0(model: nn.Module) -> float | torch.Tensor:
        value = writer_only(lambda: _normalised(evaluate(model), source))
        header = agree({} if value is None else _header(value))  # rank 0's header; others send none
        if header["kind"] == "accuracy":
            return float(header["accuracy"])
        out = value if isinstance(value, torch.Tensor) else torch.zeros(header["shape"], dtype=_DTYPES[header["dtype"]])
        wire = out.contiguous().to(_comm_device())
        dist.broadcast(wire.view(torch.uint8) if wire.dtype == torch.bool else wire, 0)
        return wire.cpu()

    return on_rank0


_DTYPES = {str(t): t for t in (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64)}


def _normalised(value: object, source: str) -> float | torch.Tensor:
    """An evaluator's result as a CPU tensor (a per-example vector) or an accuracy float (checked)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and str(value.dtype) in _DTYPES:
        return value.detach().cpu()
    return Outcome.of(value, source).accuracy  # type: ignore[arg-type]  # one-line error for anything else


def _header(value: float | torch.Tensor) -> dict:
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "shape": list(value.shape), "dtype": str(value.dtype)}
    return {"kind": "accuracy", "accuracy": value}


# ----------------------------------------------------------------------------- the search's hooks


@dataclass(frozen=True)
class SyncedPruner:
    """A pruner whose cuts are rank 0's on every rank: each rank prunes its (identical) model, then
    the structures are checked, rank 0's masks and weights broadcast, and rank 0's state agreed."""

    inner: Pruner

    @property
    def targets(self) -> tuple[str, ...]:
        return self.inner.targets

    @property
    def state_keys(self) -> tuple[str, ...]:
        return self.inner.state_keys

    def levels(self, strength: float) -> Level:
        return self.inner.levels(strength)

    def prune(self, model: nn.Module, strength: float, state: PrunerState) -> PrunerState:
        new = self.inner.prune(model, strength, state)
        sync_module(model, "pruned model")
        return agree(new)


def synced_pruner(pruner: Pruner) -> Pruner:
    """``pruner`` itself outside a distributed run, else a :class:`SyncedPruner` around it."""
    return SyncedPruner(pruner) if active() else pruner


def synced_train(train: Retrain) -> Retrain:
    """``train``, then rank 0's weights on every rank (a user's ``train=`` need not know of ranks)."""

    def train_then_sync(model: nn.Module) -> None:
        train(model)
        sync_module(model, "retrained model")

    return train_then_sync


def prune_hooks(make_train: Callable[[int], Retrain], evaluate: Evaluate, test_evaluate: Evaluate | None,
                polish: Retrain | None) -> tuple[Callable[[int], Retrain], Evaluate, Evaluate | None, Retrain | None]:
    """The search's callables as a distributed run uses them: retraining on every rank (data-parallel
    inside :func:`secateur.fit`) then synchronised; evaluation on rank 0, its result broadcast."""
    if not active():
        return make_train, evaluate, test_evaluate, polish
    return (lambda index: synced_train(make_train(index)), writer_outcome(evaluate, "evaluate"),
            writer_outcome(test_evaluate, "test_evaluate") if test_evaluate is not None else None,
            synced_train(polish) if polish is not None else None)


# ----------------------------------------------------------------------------- data-parallel training


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, rank): deterministic, and apart for each tuple."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_indices(n: int, seed: int, epoch: int, rank_: int, world: int) -> torch.Tensor:
    """The training indices rank ``rank_`` of ``world`` trains on in ``epoch``.

    One permutation of ``range(n)``, seeded by ``(seed, epoch)`` and so the same on every rank, is
    padded by wrapping around to a multiple of ``world`` and dealt out in turn: every rank gets as
    many indices (so every rank takes as many optimiser steps) and together they cover every example.
    """
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    total = math.ceil(n / world) * world
    padded = order.repeat(math.ceil(total / n))[:total]
    return padded[rank_::world]


class DataParallel:
    """One :func:`secateur.fit` call on several ranks: the model in DistributedDataParallel, each
    rank on its shard of the training split, the global batch ``batch_size`` split over the ranks."""

    def __init__(self, model: nn.Module, device: torch.device, seed: int) -> None:
        self.model, self.seed, self.rank, self.world = model, seed, rank(), world_size()
        ids = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else None
        # masks and BatchNorm statistics are synchronised once per epoch, not before every step
        self.module = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def rank_seed(self, seed: int) -> int:
        """This rank's seed for shuffling its shard, augmentation and dropout (seed itself on rank 0)."""
        return seed if self.rank == 0 else mix_seed(seed, self.rank)

    def batch_size(self, batch_size: int) -> int:
        """Each rank's batch: the global batch split over the ranks (rounded up)."""
        return math.ceil(batch_size / self.world)

    def share(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this rank's share of the batch."""
        return config.replace(batch_size=self.batch_size(config.batch_size))

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Optimiser steps per epoch, the same on every rank."""
        return math.ceil(math.ceil(n / self.world) / self.batch_size(batch_size)) if n else 0

    def epoch_data(self, data: Dataset, epoch: int) -> Dataset:
        """``data`` with this rank's shard of the training split for ``epoch``."""
        index = shard_indices(len(data.train), self.seed, epoch, self.rank, self.world)
        return dataclasses.replace(data, train=Split(data.train.images[index], data.train.labels[index]))

    def end_epoch(self, loss: float) -> float:
        """Rank 0's buffers (BatchNorm statistics) everywhere; the mean training loss over the ranks."""
        sync_module(self.model, "trained model", buffers_only=True)
        total = torch.tensor([loss], dtype=torch.float64, device=_comm_device())
        dist.all_reduce(total)
        return float(total.item()) / self.world


def data_parallel(enabled: bool | None, model: nn.Module, device: torch.device, seed: int) -> DataParallel | None:
    """A :class:`DataParallel` when a process group of several ranks is initialised, unless ``enabled``
    is False. True insists: launched by torchrun without a process group is a one-line ConfigError."""
    expect_instance(enabled, bool, "distributed", "True or False")
    if enabled is False:
        return None
    if not active():
        if enabled and launched():
            raise ConfigError("distributed=True under torchrun needs the process group: run inside "
                              "'with secateur.distributed.session():' (secateur.prune makes its own)")
        return None
    return DataParallel(model, device, seed)


# ----------------------------------------------------------------------------- worker processes


def _one_thread_each(threads: int) -> None:
    torch.set_num_threads(threads)


def parallel_map(work: Callable[[T], R], items: Sequence[T], workers: int, threads: int = 1) -> list[R]:
    """``[work(item) for item in items]`` in up to ``workers`` spawned processes of ``threads`` torch
    threads each, in order. ``work`` must be a module-level function and ``items`` picklable plain
    data (names, paths, numbers); each result comes back as the worker computed it."""
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if workers == 1 or len(items) <= 1:
        return [work(item) for item in items]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=_one_thread_each,
                             initargs=(threads,)) as pool:
        return list(pool.map(work, items))
