"""Data-parallel training on several processes or machines (``torch.distributed``).

Every rank holds the whole model and builds the same *global* batch from the same random
streams; each rank computes the loss of its share of that batch, scaled so that the shares
sum to the global batch's loss, and the gradients are summed over the ranks before clipping
and stepping (:func:`caloforge.models._training.optimizer_step`). All ranks therefore make
the same update a single process makes with the same global batch, up to the order of
floating-point additions, and a run checkpointed on N processes resumes on any other number.

Processes come from ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
in the environment; several machines too) or from :func:`launch` (N local processes, what
``--nproc N`` does). gloo is the backend on CPUs, NCCL where training runs on CUDA devices.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "World",
    "agree",
    "all_reduce_sum",
    "broadcast_module",
    "distributed",
    "from_environment",
    "gather_shares",
    "launch",
    "rank_device",
    "run_in_processes",
    "shard",
    "sync_gradients",
    "world",
]

#: How long a rank waits for the others in one collective before giving up (a lost machine).
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` of ``size``.

    >>> World(0, 1).main, World(1, 4).main
    (True, False)
    """

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """True on the rank that logs, shows progress and writes checkpoints."""
        return self.rank == 0


def world() -> World:
    """The current :class:`World` (rank 0 of 1 when ``torch.distributed`` is not in use)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def shard(n: int, of: World | None = None) -> slice:
    """This rank's share of ``n`` items of a global batch (contiguous; sizes differ by <= 1).

    >>> [shard(10, World(r, 3)) for r in range(3)]
    [slice(0, 3, None), slice(3, 6, None), slice(6, 10, None)]
    """
    w = of or world()
    return slice(w.rank * n // w.size, (w.rank + 1) * n // w.size)


def _comm_device() -> torch.device:
    """Where the process group's collectives take their tensors: this rank's CUDA device
    under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(value: Tensor, op: Any = None) -> Tensor:
    """``dist.all_reduce`` of ``value`` in place, through the backend's device."""
    op = dist.ReduceOp.SUM if op is None else op
    comm = _comm_device()
    if value.device == comm:
        dist.all_reduce(value, op=op)
    else:
        moved = value.to(comm)
        dist.all_reduce(moved, op=op)
        value.copy_(moved)
    return value


def rank_device(device: str) -> str:
    """The device this rank trains on when the run asked for ``device``: on several processes
    a CUDA run uses the rank's own GPU (set when it joined the group), else ``device``.

    >>> rank_device("cpu")
    'cpu'
    """
    if torch.device(device).type == "cuda" and world().size > 1:
        return f"cuda:{torch.cuda.current_device()}"
    return device


def all_reduce_sum(value: Tensor) -> Tensor:
    """``value`` summed over the ranks (in place; unchanged in one process)."""
    if world().size > 1:
        _all_reduce(value)
    return value


class _GatherShares(torch.autograd.Function):
    """All ranks' shares of a batch, concatenated in rank order; the backward sums the incoming
    gradient over the ranks (each rank's loss is a function of every share) and hands each
    rank the rows of its own share."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        w, comm = world(), _comm_device()
        sizes = torch.zeros(w.size, dtype=torch.int64, device=comm)
        sizes[w.rank] = len(x)
        _all_reduce(sizes)
        counts = [int(n) for n in sizes.tolist()]
        width = max(counts)
        padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=comm)
        padded[: len(x)] = x.detach().to(comm)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.counts, ctx.rank = counts, w.rank
        return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]).to(x.device)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = _all_reduce(grad.contiguous().clone())
        lo = sum(ctx.counts[: ctx.rank])
        return total[lo : lo + ctx.counts[ctx.rank]]


def gather_shares(x: Tensor) -> Tensor:
    """The global batch whose share on this rank is ``x`` (rows in rank order, as
    :func:`shard` splits it), differentiable: a loss of the whole batch (an MMD, which does not
    split into per-shower terms) computed on every rank and weighted ``1 / size`` there gives,
    once the gradients are summed (:func:`sync_gradients`), the gradient one process computes.
    ``x`` itself in one process."""
    if world().size == 1:
        return x
    return _GatherShares.apply(x)


def agree(flags: Sequence[bool], from_main: Sequence[bool] = ()) -> tuple[bool, ...]:
    """Decisions all ranks take together: each of ``flags`` is true if it is true on any rank;
    each of ``from_main`` is rank 0's value (timers, which differ between ranks)."""
    w = world()
    if w.size == 1:
        return tuple(flags) + tuple(from_main)
    own = [float(f) for f in flags] + [float(f) if w.main else 0.0 for f in from_main]
    t = torch.tensor(own, dtype=torch.float64)
    _all_reduce(t, dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def sync_gradients(module: nn.Module) -> None:
    """Sum ``module``'s gradients over the ranks (one flat all-reduce); a parameter without a
    gradient on this rank counts as zero, so every rank ends with the same gradients."""
    if world().size == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    _all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def broadcast_module(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical replicas even where the
    machines' arithmetic differs in the last bits)."""
    if world().size == 1:
        return
    comm = _comm_device()
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            with torch.no_grad():
                moved = tensor.data.to(comm)
                dist.broadcast(moved, src=0)
                if moved is not tensor.data:
                    tensor.data.copy_(moved)


def _backend(device: str | torch.device | None = None) -> str:
    return "nccl" if torch.device(device or "cpu").type == "cuda" and dist.is_nccl_available() else "gloo"


def from_environment(device: str | torch.device | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1);
    False (nothing done) when the process was not started that way or already joined."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if "LOCAL_RANK" in os.environ and torch.device(device or "cpu").type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(_backend(device), timeout=TIMEOUT)
    return True


@contextlib.contextmanager
def distributed(device: str | torch.device | None = None) -> Iterator[World]:
    """The process group of a ``torchrun`` start for the block (left alone when already set up,
    e.g. by :func:`launch`); one process otherwise."""
    joined = from_environment(device)
    try:
        yield world()
        if joined:  # every rank done with its collectives before any leaves: a rank that tears
            dist.barrier()  # the group down under a peer's last message aborts it (gloo)
    finally:
        if joined:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    rank: int,
    size: int,
    port: int,
    threads: int | None,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
    device: str | None = None,
) -> None:
    """One rank of :func:`launch`: join the group, run ``target(*args)``, report to the parent."""
    from caloforge.safety import die_with_parent

    os.setpgrp()  # Ctrl-C reaches the parent only, which forwards it once to every rank
    die_with_parent()
    if threads:
        torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size))
    code = 0
    try:
        if torch.device(device or "cpu").type == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())  # one GPU per rank
        dist.init_process_group(_backend(device), rank=rank, world_size=size, timeout=TIMEOUT)
        value = target(*args)
        if rank == 0:
            results.put(("ok", rank, value))
    except KeyboardInterrupt:
        results.put(("interrupted", rank, None))
        code = 130
    except BaseException as exc:  # every failure goes to the parent
        try:
            pickle.dumps(exc)
        except Exception:  # an exception that cannot travel goes as text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        results.put(("error", rank, exc))
        code = 1
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    os._exit(code)  # skip interpreter teardown: the group's threads may still be winding down


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal
        return f"signal {number}"


def _first_failure(procs: list[Any]) -> tuple[int, int] | None:
    """``(rank, exit code)`` of a rank that ended badly — a killed one (negative code) before
    a peer that only lost it — or None."""
    bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
    return min(bad, key=lambda rc: rc[1] >= 0) if bad else None


def launch(
    target: Callable[..., Any],
    nproc: int,
    *args: Any,
    threads: int | None = None,
    poll_s: float = 0.2,
    grace_s: float = 20.0,
    device: str | None = None,
) -> Any:
    """Run ``target(*args)`` on ``nproc`` local processes joined in a process group (gloo;
    NCCL with one CUDA device per rank when ``device`` is a CUDA device) and return rank 0's
    result.

    ``target`` must be importable (a module-level function). ``threads``: torch threads per
    process (default: the cores divided among the processes). A rank that fails stops the
    others and its exception is raised here; Ctrl-C (or SIGTERM) is passed on to every rank
    once, so the run stops together after its current step (rank 0 saves a checkpoint) and
    :class:`KeyboardInterrupt` is raised; a second Ctrl-C ends the ranks at once.
    """
    import multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(rank, nproc, port, threads, target, args, results, device),
            name=f"caloforge-rank-{rank}",
        )
        for rank in range(nproc)
    ]
    stops = 0

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stops
        stops += 1
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT if stops == 1 else signal.SIGKILL)

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    messages: list[tuple[str, int, Any]] = []
    try:
        for p in procs:
            p.start()
        failed_at: float | None = None
        first_failed: tuple[int, int] | None = None  # (rank, exit code) of the first to end badly
        while any(p.exitcode is None for p in procs):
            while not results.empty():
                messages.append(results.get())
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = time.monotonic()  # the others notice the lost peer, or are ended
                first_failed = _first_failure(procs)
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.exitcode is None:
                        p.kill()
            time.sleep(poll_s)
        for p in procs:
            p.join()
        while not results.empty():
            messages.append(results.get())
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for p in procs:
            if p.exitcode is None:
                p.kill()
                p.join()
    if first_failed is None:  # every rank ended between two polls
        first_failed = _first_failure(procs)
    if first_failed is not None and first_failed[1] < 0 and not stops:
        rank, code = first_failed  # killed (kill -9, out of memory): it could not say why
        from caloforge.engines import WorkerDied

        raise WorkerDied(
            f"rank {rank} of the {nproc}-process training died ({_signal_name(-code)}: killed, or "
            "out of memory); the other ranks were stopped and any checkpoint already in the run "
            "directory is kept (continue it with --resume)"
        )
    errors = [m for m in messages if m[0] == "error"]
    if errors:  # the first to fail is the cause; the others lost their peer
        raise errors[0][2]
    if stops or any(m[0] == "interrupted" for m in messages):
        raise KeyboardInterrupt
    done = [m for m in messages if m[0] == "ok"]
    if not done:
        codes = ", ".join(f"rank {r} exit code {p.exitcode}" for r, p in enumerate(procs))
        raise RuntimeError(f"the training processes ended without a result ({codes})")
    return done[0][2]


def run_in_processes(
    target: Callable[..., Any], nproc: int, *args: Any, threads: int | None, device: str | None = None
) -> Any:
    """``target(*args)`` (a module-level training function) on ``nproc`` local processes
    (``--nproc``), in the process group of a ``torchrun`` start, or here; the result of rank 0
    (None on the other ranks, which report nothing). ``device``: the device the training runs
    on (a CUDA device: NCCL, one device per rank)."""
    if nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--nproc inside a torchrun start: give the process count to torchrun only")
        return launch(target, nproc, *args, threads=threads, device=device)
    if threads is not None:
        torch.set_num_threads(threads)
    with distributed(device) as w:
        result = target(*args)
    return result if w.main else None
