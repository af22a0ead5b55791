"""Data parallelism over ``torchrun``: one process per device, each with its own vLLM engine and an FSDP2 shard of
the policy.

    torchrun --nproc_per_node 8 -m deepscaler train --config deepscaler-1.5b-8k

What each rank does in a step (the loop is the same as with one process; the functions here are its only
collectives):

* rollout: the step's ``train_batch_size`` prompts are drawn in the same order on every rank; rank r generates the
  r-th contiguous slice (whole groups), with the sampling seed the single-process run would give each prompt, so a
  run on W ranks samples exactly what a run on one process samples;
* rewards, group advantages, old and reference log-probs: local (a group never spans ranks);
* update: the loss normalisers (tokens, sequences of the mini-batch) are summed over ranks, every rank runs the
  same number of micro-batches (an idle rank runs an empty one, so FSDP's collectives stay in lock-step), and FSDP2
  reduces the gradients;
* weight sync: every rank gathers the full parameters and loads them into its own engine;
* metrics, validation and checkpoints: gathered/reduced; rank 0 writes files.

With one process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing here does any communication.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    """torch.distributed backend (nccl on CUDA, gloo on CPU); None for a single process."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> tuple[int, int]:
        """``[start, end)`` of this rank's contiguous slice of ``count`` items (``count % world_size == 0``)."""
        if count % self.world_size:
            raise ValueError(f"{count} items cannot be split evenly over {self.world_size} ranks")
        size = count // self.world_size
        return self.rank * size, (self.rank + 1) * size

    def split(self, count: int) -> tuple[int, int]:
        """``[start, end)`` of this rank's part of ``count`` items, as even as possible (any count)."""
        return count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size


SINGLE_PROCESS = DistInfo()


def init_distributed(device_request: str = "auto") -> tuple[DistInfo, str]:
    """(DistInfo, reason). Joins the torchrun group when ``WORLD_SIZE`` > 1; otherwise a single process.

    On CUDA every GPU stays visible and each rank makes ``cuda:LOCAL_RANK`` its current device, as TRL's colocate
    mode does: the rank's vLLM engine (``external_launcher`` executor) takes its device from ``LOCAL_RANK``, and
    NCCL can use peer-to-peer links between the visible devices.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS, "single process (no torchrun WORLD_SIZE > 1)"
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        backend = dist.get_backend()
    else:
        use_cuda = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(rank_device(local_rank, torch.cuda.device_count()))
        dist.init_process_group(backend)
    info = DistInfo(rank, world_size, local_rank, backend)
    return info, f"torchrun: rank {rank} of {world_size} (local rank {local_rank}), {backend}"


def rank_device(local_rank: int, device_count: int) -> int:
    """The CUDA device index of a rank: its ``LOCAL_RANK`` among the visible GPUs."""
    if local_rank >= device_count:
        raise RuntimeError(f"LOCAL_RANK {local_rank} but only {device_count} CUDA devices are visible; start at most "
                           "one process per visible GPU (torchrun --nproc_per_node)")
    return local_rank


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ collectives
def all_sum(info: DistInfo, values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64 on CPU; a no-op for one process)."""
    if not info.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def all_max(info: DistInfo, value: int) -> int:
    """The largest ``value`` of any rank."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device(info))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_gather(info: DistInfo, value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def reduce_over_ranks(info: DistInfo, metrics: dict[str, float],
                      count_key: str = "rollout/num_tokens") -> dict[str, float]:
    """This rank's per-token statistics made global (see :func:`combine_rank_metrics`)."""
    if not info.enabled:
        return metrics
    return combine_rank_metrics(all_gather(info, metrics), count_key)


def combine_rank_metrics(per_rank: list[dict[str, float]], count_key: str = "rollout/num_tokens") -> dict[str, float]:
    """Statistics of several ranks as one: ``count_key`` summed, ``*max*`` keys the maximum, the others the mean
    weighted by each rank's ``count_key`` (the mean over all ranks' tokens together). Empty dicts (ranks with
    no samples) are ignored."""
    every = [m for m in per_rank if m]
    out: dict[str, float] = {}
    for key in sorted({k for m in every for k in m}):
        values = [(m[key], m.get(count_key, 1.0)) for m in every if key in m]
        if key == count_key:
            out[key] = sum(v for v, _ in values)
        elif "max" in key:
            out[key] = max(v for v, _ in values)
        else:
            out[key] = sum(v * w for v, w in values) / (sum(w for _, w in values) or 1.0)
    return out


def sum_over_ranks(info: DistInfo, metrics: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks (for shares of a mini-batch-global mean that each rank holds a part of)."""
    if not info.enabled:
        return metrics
    every = all_gather(info, metrics)
    return {k: sum(rank.get(k, 0.0) for rank in every) for k in sorted({k for r in every for k in r})}


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _collective_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else torch.device("cpu")


# ------------------------------------------------------------------------------------------------ FSDP2
def shard_model(model: torch.nn.Module, info: DistInfo, policy: Any = None) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) each decoder layer, then the whole model; parameters become DTensors sharded over the
    ranks. Gradients are averaged over ranks by FSDP; ``LossNormalizer.dp_size`` turns that average into the sum
    of the ranks' shares of a mini-batch-global loss.

    With a 16-bit precision policy the layers all-gather their weights in the compute dtype and reduce gradients
    in the policy's reduce dtype (``MixedPrecisionPolicy``, as DeepScaleR's FSDP ran: half the traffic of fp32
    weights); master weights and optimizer state stay in the param dtype. The root (embeddings, final norm, LM
    head) keeps its param dtype, so the LM head stays float32 as ``fp32_lm_head`` promises."""
    if not info.enabled:
        return model
    device_type = "cuda" if info.backend == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (info.world_size,))
    layer_kwargs: dict[str, Any] = {}
    root_kwargs: dict[str, Any] = {}
    if policy is not None and policy.is_mixed:
        dtypes = policy.fsdp_mixed_precision_kwargs()
        layer_kwargs["mp_policy"] = MixedPrecisionPolicy(**dtypes)
        root_kwargs["mp_policy"] = MixedPrecisionPolicy(reduce_dtype=dtypes["reduce_dtype"])
    layers = getattr(getattr(model, model.base_model_prefix, model), "layers", None)
    for layer in layers or []:
        fully_shard(layer, mesh=mesh, **layer_kwargs)
    fully_shard(model, mesh=mesh, **root_kwargs)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Put the model's sharded parameters back in place. FSDP2 leaves the root's own parameters (embeddings,
    final norm, LM head) gathered after a forward with no backward (old/reference log-probs, the sync probe);
    while they are, ``model.parameters()`` and ``state_dict()`` show the gathered copies, not the sharded
    parameters the optimizer holds."""
    if isinstance(model, FSDPModule):
        model.reshard()


def full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the model's state dict with sharded tensors gathered, one at a time (every rank must
    consume the whole iterator in the same order: each DTensor is an all-gather)."""
    reshard(model)
    for name, tensor in model.state_dict().items():
        full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        yield name, full.detach()


def full_state_dict(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU (collective with several ranks: all take part in every gather,
    only those with ``keep`` hold the result, the others get an empty dict)."""
    gathered = {}
    for name, tensor in full_tensors(model):
        if keep:
            gathered[name] = tensor.cpu()
    return gathered


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state on the CPU, keyed by parameter name rather than position, so that it loads into
    any number of ranks (collective with several ranks; with cpu_offload only rank 0 holds it)."""
    reshard(model)
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state from :func:`full_optimizer_state` (or a positional ``optimizer.state_dict()``, as checkpoints
    written before name-keyed states hold) into this rank's parameters, sharded or not."""
    reshard(model)
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    if any(isinstance(key, int) for key in state.get("state", {})) or any(
            isinstance(index, int) for group in state.get("param_groups", []) for index in group["params"]):
        # positional: the optimizer was built over the trainable parameters in model order
        state = {"state": {names[index]: value for index, value in state["state"].items()},
                 "param_groups": [{**group, "params": [names[index] for index in group["params"]]}
                                  for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def plain_norm(value: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (clip_grad_norm_ returns a DTensor for sharded parameters)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
