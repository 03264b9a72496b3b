"""One run over several processes (torchrun): the process group, each rank's share of a batch or of a
set of samples, reductions, and batch norm over the whole batch on CPUs (torch's SyncBatchNorm is GPU-only).

Without torchrun (no WORLD_SIZE, or 1) every function here is a no-op and nothing is imported from
torch.distributed, so a one-process run is unchanged bit for bit."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world`` processes and the backend ("" alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()
_BN_GROUP = None  # batch norm's exchanges run in their own group: inside the backward pass they would
# otherwise interleave with DistributedDataParallel's asynchronous gradient all-reduces


def info() -> DistInfo:
    """This process's place in the run (``DistInfo()`` when alone)."""
    return _INFO


def env_world() -> int:
    """The world size torchrun announces (1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init(device_type: str, timeout_s: float) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); a collective that waits
    longer than ``timeout_s`` for another rank fails instead of hanging."""
    global _INFO, _BN_GROUP
    world = env_world()
    if world <= 1:
        _INFO = DistInfo()
        return _INFO
    import torch.distributed as dist
    backend = "nccl" if device_type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _INFO = DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, backend=backend)
    if device_type != "cuda":
        _BN_GROUP = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return _INFO


class RankStopped(Exception):
    """torchrun ended this rank (SIGTERM) because another rank failed."""


def stop_on_sigterm() -> None:
    """Under torchrun: turn the SIGTERM with which torchrun ends the surviving ranks (when one rank
    fails) into ``RankStopped``, so that the run can say what happened and close its files."""
    if not _INFO.active:
        return
    import signal

    def handler(signum, frame):
        raise RankStopped("torchrun stopped this rank (SIGTERM), most likely because another rank failed")
    signal.signal(signal.SIGTERM, handler)


def shutdown() -> None:
    """Leave the process group (end of a run)."""
    global _INFO, _BN_GROUP
    _BN_GROUP = None
    if _INFO.active:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    _INFO = DistInfo()
_BN_GROUP = None  # batch norm's exchanges run in their own group: inside the backward pass they would
# otherwise interleave with DistributedDataParallel's asynchronous gradient all-reduces


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of ``x`` along dim 0 (sizes differ by at most one)."""
    return x if not _INFO.active else x.tensor_split(_INFO.world)[_INFO.rank]


def all_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """``t`` summed over the ranks, in place."""
    if _INFO.active:
        import torch.distributed as dist
        dist.all_reduce(t, group=group)
    return t


def gather_shards(part: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``part`` (its ``shard`` of an ``n``-row tensor, computed locally) put back in order:
    the whole tensor, the same on every rank."""
    if not _INFO.active:
        return part
    import torch.distributed as dist
    sizes = [len(s) for s in torch.empty(n).tensor_split(_INFO.world)]
    top = max(sizes)
    buf = part.new_zeros((top, *part.shape[1:]))
    buf[:len(part)] = part
    out = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(out, buf.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def rng_fingerprint() -> int:
    """A 20-bit digest of the torch and NumPy random states: ranks that draw the same numbers share it."""
    import zlib

    import numpy as np
    crc = zlib.crc32(torch.get_rng_state().numpy().tobytes())
    np_state = np.random.get_state()
    crc = zlib.crc32(np_state[1].tobytes() + int(np_state[2]).to_bytes(8, "little"), crc)
    return crc % (1 << 20)


class SharedDecoding:
    """A split streamed from disk, read by every rank: each rank decodes its contiguous share of the
    asked indices (and plans only that share ahead), and the ranks exchange the decoded images, so
    every rank gets all of them having decoded a 1/N share."""

    def __init__(self, images) -> None:
        self.images = images

    def plan(self, chunks: list[torch.Tensor]) -> None:
        plan = getattr(self.images, "plan", None)
        if plan is not None:
            plan([shard(c) for c in chunks])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return gather_shards(self.images[shard(idx)], len(idx))

    def __len__(self) -> int:
        return len(self.images)

    def __getattr__(self, name: str):
        return getattr(self.images, name)


def shared_decoding(images):
    """``images`` as every rank should read them in step: a SharedDecoding for a streamed split under
    torchrun, else the images themselves (in memory, each rank indexes what it needs)."""
    return SharedDecoding(images) if _INFO.active and not isinstance(images, torch.Tensor) else images


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; plain data)."""
    if not _INFO.active:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _INFO.active:
        import torch.distributed as dist
        dist.barrier()


class _SumOverRanks(torch.autograd.Function):
    """The sum of ``x`` over the ranks; its gradient is the sum of the ranks' gradients (every rank's
    loss depends on every rank's ``x``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return all_sum(x.clone(), _BN_GROUP)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return all_sum(g.clone(), _BN_GROUP)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the ranks (``x`` itself when alone)."""
    return _SumOverRanks.apply(x) if _INFO.active else x


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch over every rank (two
    differentiable all-reduces: the mean, then the centred sum of squares), so data-parallel training
    normalises as one process would. Same parameters, buffers and eval behaviour as nn.BatchNorm*d."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _INFO.active):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = x.new_full((1,), x.numel() // x.shape[1])
        stats = sum_over_ranks(torch.cat([x.sum(dims), local]))  # per-channel sums and the sample count
        count = stats[-1].detach()
        mean = stats[:-1] / count
        d = x - mean.view(shape)
        var = sum_over_ranks((d * d).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        y = d * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm of ``module`` computing its training statistics over all ranks, in place
    (parameters and buffers are kept): torch's SyncBatchNorm on GPUs, CrossRankBatchNorm on CPUs."""
    if not _INFO.active:
        return module
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CrossRankBatchNorm):
            new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device_type)
    return module


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradients averaged over the ranks in the backward
    pass); the model itself when alone. Buffers are not broadcast: synchronised batch norm keeps them equal."""
    if not _INFO.active:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index if device.index is not None else _INFO.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

