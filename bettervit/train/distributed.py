"""One process or many: DDP (gloo on CPU, nccl on GPU) under torchrun, and an FSDP2 option.

Parallelism is applied here, outside the model code (torchtitan's habit): the model file knows nothing of it.
Only rank 0 writes files and logs; every rank runs the same steps on its own shard of each epoch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | None) -> torch.device:
    """``auto`` / None (CUDA if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; the one place that
    checks a CUDA request against the machine (one-line ValueError)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu or cuda, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return dev


def setup(device: str | None = None) -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup(ok: bool = True) -> None:
    """Leave the process group. After a successful run all ranks meet at a barrier first: a rank that tears gloo
    down while a peer is still inside the last collective can abort ("terminate called without an active
    exception"). After an error there is no barrier (the other ranks may never reach it)."""
    if dist.is_available() and dist.is_initialized():
        try:
            if ok:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap(model: nn.Module, info: DistInfo, mode: str = "ddp") -> nn.Module:
    """``ddp``: DistributedDataParallel. ``fsdp``: FSDP2 ``fully_shard`` on every block, then on the root."""
    if not info.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in list(model.modules()):
            if m is not model and type(m).__name__.endswith("Block"):
                fully_shard(m)
        fully_shard(model)
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    """The optimizer's state dict; under FSDP2 gathered to full tensors on the CPU (a collective: call on all ranks)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """A float64 (sum, sum of squares) over all parameters: equal on every rank when the ranks agree."""
    s = torch.zeros(2, dtype=torch.float64)
    for p in model.parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        t = t.double().cpu()
        s[0] += t.sum()
        s[1] += (t * t).sum()
    return s


def ranks_agree(model: nn.Module, info: DistInfo) -> tuple[bool, list[list[float]]]:
    """Gather every rank's weight fingerprint; True when all are identical."""
    fp = weights_fingerprint(model).to(info.device)
    if not info.enabled:
        return True, [fp.tolist()]
    out = [torch.zeros_like(fp) for _ in range(info.world)]
    dist.all_gather(out, fp)
    vals = [o.cpu().tolist() for o in out]
    return all(v == vals[0] for v in vals), vals
