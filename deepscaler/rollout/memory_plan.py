"""The GPU memory plan of a training run: what the trainer and the colocated vLLM engine hold, phase by phase,
and the ``gpu_memory_utilization`` that lets both fit on one device.

Since vLLM 0.7 ``gpu_memory_utilization`` is the engine's own budget as a share of the *whole* card (vLLM
``CacheConfig.gpu_memory_utilization``: a per-instance limit; the worker reserves ``total x fraction`` and refuses
to start when less is free). The trainer's weights, gradients, AdamW state, reference model and activations are
outside that budget, so the fraction has to be chosen against them. DeepScaleR's 0.85 meant something else: in
verl's fork of vLLM 0.6.3 it was a share of the memory left free *after* the trainer was built, and the KV cache
was freed after every generation (verl commit 9a956c0 documents the change of meaning).

Two moments decide whether a run fits (everything per rank, in bytes):

* the engine awake (rollouts, validation, weight sync): trainer resident + engine budget <= usable;
* the policy update: trainer peak + what the engine keeps <= usable, where the engine keeps its whole budget
  without sleep mode and only its CUDA-graph pool asleep (level 1 moves its weights to host memory and drops the
  KV cache; vLLM ``LLM.sleep``).

``usable`` is the card minus a headroom share for what no formula here counts (allocator fragmentation, cuBLAS
and NCCL workspaces). Every figure is an estimate from the model's geometry and the trainer's code
(``deepscaler.training.packing.token_logprobs``: response tokens through the LM head in fp32 chunks of 1024,
checkpointed); the device check compares the trainer's peak with a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

GiB = 1 << 30
MiB = 1 << 20

HEADROOM_SHARE = 0.05
"""Share of the card kept free of every estimate: the caching allocator's fragmentation and the workspaces of
cuBLAS/NCCL are not modelled (DeepScaleR's 0.85-of-free left 15 % for the same reasons, with less modelled)."""
CUDA_CONTEXT_BYTES = 1 * GiB
"""Per process: the CUDA context and kernel images (about 0.5 GiB for torch on an H100) plus cuBLAS workspaces."""
NCCL_BYTES = 1 * GiB // 2
"""Per process with data parallelism: NCCL communicator buffers."""
CUDA_GRAPH_BYTES = 1 * GiB
"""vLLM's CUDA-graph pool for the decode batch sizes it captures (vLLM logs its measured figure at start-up as
"Graph capturing finished ... took X GiB"); not released by sleep mode unless ``sleep_mode_offload_cudagraph``."""
MAX_FRACTION = 0.95
"""Largest fraction the plan chooses on its own."""
LM_HEAD_CHUNK = 1024
"""Response tokens per LM-head chunk in the trainer (``token_logprobs``' default). Measured on an H200 with the
1.5B geometry and 16K tokens: 1024 instead of 4096 took the update's peak from 40.0 to 33.2 GiB at the same speed
(1.242 vs 1.228 s), since a chunk of Qwen2's 152K-token vocabulary is 0.6 GB of fp32 per copy instead of 2.5."""
LM_HEAD_BACKWARD_COPIES = 5
"""[chunk, vocab] fp32 tensors alive at once in a chunk's recomputed backward: the scaled logits and softmax saved
by the entropy term, plus three in flight (the gradients of softmax, of the scaled logits and of the logits)."""
LM_HEAD_FORWARD_COPIES = 3
"""[chunk, vocab] fp32 tensors alive at once in a chunk's forward (scaled logits, softmax, their product)."""

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
REFERENCE_PLACEMENTS = ("gpu", "cpu", "none")


class MemoryPlanError(RuntimeError):
    """The run cannot fit on the planned GPU; the message lists the numbers and the changes that would fit."""


@dataclass(frozen=True)
class ModelGeometry:
    """What the memory of a decoder-only transformer depends on (Qwen2 / Llama layout)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = False
    attention_bias: bool = True
    """q/k/v projections carry biases (Qwen2 does)."""

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: q, k, v, o projections, gate/up/down MLP, two RMSNorms."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.attention_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def embedding_parameters(self) -> int:
        """Input embeddings plus the LM head when untied."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        """All parameters: embeddings (+ untied head), the layers, the final norm."""
        return self.embedding_parameters + self.num_layers * self.layer_parameters + self.hidden_size

    def kv_bytes_per_token(self, dtype: str) -> int:
        """K and V of one token over all layers: 2 x layers x kv heads x head_dim x dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes(dtype)

    @classmethod
    def from_config(cls, config: Any) -> ModelGeometry:
        """From a transformers config (``get_text_config()`` when it has one)."""
        text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
        heads = text.num_attention_heads
        return cls(num_layers=text.num_hidden_layers, hidden_size=text.hidden_size,
                   intermediate_size=text.intermediate_size, num_heads=heads,
                   num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                   head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                   vocab_size=text.vocab_size, tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
                   attention_bias=bool(getattr(text, "attention_bias", text.model_type == "qwen2")))


@dataclass(frozen=True)
class PlanInputs:
    """Everything the plan is a function of."""

    geometry: ModelGeometry
    gpu_memory_bytes: int
    """Total memory of one GPU (what ``torch.cuda.mem_get_info`` reports as total, or ``--gpu-memory``)."""
    max_model_len: int
    """The engine's context: longest prompt + response."""
    micro_batch_tokens: int
    """Trainer tokens per forward/backward (``algorithm.max_tokens_per_micro_batch``)."""
    ranks: int = 1
    """Data-parallel ranks (one GPU each); FSDP2 shards parameters, gradients and AdamW state over them."""
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    rollout_dtype: str = "bfloat16"
    gradient_checkpointing: bool = True
    reference: str = "gpu"
    """Where the frozen reference model lives: "gpu" (replicated per rank, compute dtype), "cpu" (host memory,
    on the GPU only for its log-probs, while the engine sleeps and the gradients are freed) or "none" (no KL)."""
    sleep_level: int = 1
    """vLLM sleep level during the update: 0 (engine stays awake), 1 or 2 (weights and KV cache released)."""
    cuda_graphs: bool = True
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384
    """vLLM's scheduler budget (16384: its default for the LLM class on a GPU of 70 GiB or more)."""
    requested_fraction: float | None = None
    """``rollout.gpu_memory_utilization`` when set: checked instead of chosen."""
    requested_kv_bytes: int | None = None
    """``rollout.kv_cache_memory_bytes`` when set: the fraction is derived from it."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank, the chosen fraction and the verdict."""

    inputs: PlanInputs
    trainer: dict[str, int]
    """Named parts of the trainer's memory (params, grads, adamw, reference, context, checkpoints, ...)."""
    trainer_resident: int
    """What the trainer holds while the engine generates (no gradients: they are freed after each step)."""
    trainer_peak: int
    """The trainer's high-water mark during the update."""
    engine: dict[str, int]
    """weights, cuda_graphs, activations, kv_cache."""
    engine_budget: int
    engine_asleep: int
    """What the engine keeps on the GPU while asleep (its whole budget with sleep_level 0)."""
    kv_floor: int
    """Smallest useful KV cache: one full-length sequence, and no less than the engine's weights."""
    gpu_memory_utilization: float
    fraction_reason: str
    usable: int
    host_bytes: int
    """Host memory per rank for the engine's weights while asleep at level 1 and an offloaded reference model."""
    problems: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def trainer_peak_allocated(self) -> int:
        """The trainer's peak as ``torch.cuda.max_memory_allocated()`` reports it: without the CUDA context and
        NCCL buffers, which live outside PyTorch's allocator (what a measurement of the update compares with)."""
        return self.trainer_peak - self.trainer["context"]

    @property
    def kv_sequences(self) -> int:
        """Full-length (max_model_len) sequences the KV cache holds at once."""
        i = self.inputs
        return self.engine["kv_cache"] // (i.geometry.kv_bytes_per_token(i.rollout_dtype) * i.max_model_len)

    @property
    def awake_total(self) -> int:
        """Trainer resident + the sync's gathered tensor + the engine's whole budget."""
        return self.trainer_resident + self.trainer["sync_buffer"] + self.engine_budget

    @property
    def update_total(self) -> int:
        return self.trainer_peak + self.engine_asleep

    def lines(self) -> list[str]:
        """The ``memory plan`` block printed at start-up and by ``--dry-run``."""
        i = self.inputs
        sleep = {0: "off", 1: "level 1", 2: "level 2"}[i.sleep_level]
        out = [f"memory plan ({i.ranks} x {_gib(i.gpu_memory_bytes)}; per rank; sleep mode {sleep}; "
               f"CUDA graphs {'on' if i.cuda_graphs else 'off'}; usable {_gib(self.usable)} after "
               f"{HEADROOM_SHARE:.0%} headroom)",
               "  trainer: " + ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in self.trainer.items() if v),
               f"  trainer resident {_gib(self.trainer_resident)}, peak in the update {_gib(self.trainer_peak)}",
               "  engine: " + ", ".join(f"{k} {_gib(v)}" for k, v in self.engine.items())
               + f" = budget {_gib(self.engine_budget)} (KV floor {_gib(self.kv_floor)}; the KV cache holds "
               f"{self.kv_sequences} sequences of {i.max_model_len} tokens)",
               f"  awake (rollout, sync): {_gib(self.awake_total)}; update: {_gib(self.update_total)} "
               f"(engine keeps {_gib(self.engine_asleep)})",
               f"  gpu_memory_utilization {self.gpu_memory_utilization:.2f} ({self.fraction_reason})"]
        if self.host_bytes:
            out.append(f"  host memory (engine weights asleep at level 1, offloaded reference): {_gib(self.host_bytes)}"
                       " per rank")
        if self.fits:
            out.append("  verdict: fits")
        else:
            out += ["  verdict: does not fit"] + [f"    - {p}" for p in self.problems]
            out += ["  fixes that fit: " + ("; ".join(self.fixes) if self.fixes else "none of the single changes "
                                        "tried (sleep mode, checkpointing, micro-batch, reference, ranks)")]
        return out

    def check(self) -> MemoryPlan:
        """Raise MemoryPlanError with the whole block when the plan does not fit; return self otherwise."""
        if not self.fits:
            raise MemoryPlanError("the run does not fit on the GPU:\n" + "\n".join(self.lines()))
        return self


def dtype_bytes(dtype: str) -> int:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


def trainer_memory(i: PlanInputs) -> tuple[dict[str, int], int, int]:
    """(named parts, resident bytes, peak bytes) of the trainer on one rank.

    Resident: sharded fp32 master weights and AdamW's two moments, the reference model (replicated, compute
    dtype), the CUDA context. Peak adds the sharded gradients and the larger of the optimizer step's temporary
    (``adamw_step``) and the activations of one micro-batch of
    ``micro_batch_tokens`` tokens: the checkpointed layer inputs (residual stream, param dtype) plus the larger
    of one layer's recomputed activations and one LM-head chunk's backward. With ``ranks`` > 1, FSDP2
    all-gathers the root (embeddings and head, param dtype) and two layers at a time (compute dtype, its
    ``MixedPrecisionPolicy``; see deepscaler.training.distributed.shard_model).
    """
    g, p = i.geometry, i.geometry.parameters
    pb, cb = dtype_bytes(i.param_dtype), dtype_bytes(i.compute_dtype)
    tokens, sharded = i.micro_batch_tokens, math.ceil(p / i.ranks)
    # FSDP2 with MixedPrecisionPolicy keeps the residual stream in the compute dtype; one process keeps the
    # param dtype (embedding output) under autocast.
    residual = cb if i.ranks > 1 else pb
    h, inter = g.hidden_size, g.intermediate_size
    qkv = (g.num_heads + 2 * g.num_kv_heads) * g.head_dim
    # one layer's saved activations per token: two norm inputs in the residual dtype; norm outputs, q/k/v,
    # attention output and o_proj input in the compute dtype; gate, up, act(gate) and their product.
    layer_per_token = 2 * h * residual + (4 * h + qkv) * cb + 4 * inter * cb
    chunk = min(LM_HEAD_CHUNK, tokens)
    head_backward = LM_HEAD_BACKWARD_COPIES * chunk * g.vocab_size * 4
    if i.gradient_checkpointing:
        saved = g.num_layers * tokens * h * residual
        working = max(tokens * layer_per_token, head_backward)
    else:
        saved = g.num_layers * tokens * layer_per_token
        working = head_backward
    parts = {
        "params": sharded * pb,
        "adamw": 2 * sharded * pb,
        "reference": p * cb if i.reference == "gpu" else 0,
        "context": CUDA_CONTEXT_BYTES + (NCCL_BYTES if i.ranks > 1 else 0),
        "grads": sharded * pb,
        "fsdp_gathered": (g.embedding_parameters * pb + 2 * g.layer_parameters * cb) if i.ranks > 1 else 0,
        "activations": saved + working + 2 * tokens * h * 4,  # + the final hidden states and their gather, fp32
        # torch's foreach AdamW allocates sqrt(v) for every parameter at once; activations are freed by then
        "adamw_step": sharded * pb,
        # the weight sync gathers one full tensor at a time (the largest: an embedding) in the param dtype
        "sync_buffer": g.vocab_size * h * pb,
    }
    resident = parts["params"] + parts["adamw"] + parts["reference"] + parts["context"]
    working_peak = max(parts["fsdp_gathered"] + parts["activations"], parts["adamw_step"])
    return parts, resident, resident + parts["grads"] + working_peak


def engine_fixed_memory(i: PlanInputs) -> dict[str, int]:
    """The engine's memory besides its KV cache: weights (rollout dtype), the CUDA-graph pool, and the profiled
    activation peak (a ``max_num_batched_tokens`` prefill through the MLP, and the sampler's fp32 logits,
    probabilities and log-probabilities for ``max_num_seqs`` sequences)."""
    g = i.geometry
    rb = dtype_bytes(i.rollout_dtype)
    activations = (i.max_num_batched_tokens * (2 * g.intermediate_size + 4 * g.hidden_size) * rb
                   + 3 * i.max_num_seqs * g.vocab_size * 4)
    return {"weights": g.parameters * rb, "cuda_graphs": CUDA_GRAPH_BYTES if i.cuda_graphs else 0,
            "activations": activations}


def plan_memory(inputs: PlanInputs, *, suggest_fixes: bool = True) -> MemoryPlan:
    """The memory plan for ``inputs``: trainer and engine bytes, the fraction, the verdict and (when it does not
    fit) the single changes that would make it fit."""
    i = inputs
    if i.reference not in REFERENCE_PLACEMENTS:
        raise ValueError(f"reference placement {i.reference!r}: expected one of {REFERENCE_PLACEMENTS}")
    if i.sleep_level not in (0, 1, 2):
        raise ValueError(f"sleep level {i.sleep_level}: expected 0 (off), 1 or 2")
    total = i.gpu_memory_bytes
    usable = int(total * (1 - HEADROOM_SHARE))
    trainer, resident, peak = trainer_memory(i)
    fixed = engine_fixed_memory(i)
    fixed_sum = sum(fixed.values())
    kv_floor = max(i.geometry.kv_bytes_per_token(i.rollout_dtype) * (i.max_model_len + 256), fixed["weights"])
    # while the engine sleeps it keeps its CUDA-graph pool; awake during the update it keeps everything
    coexisting = resident + trainer["sync_buffer"] if i.sleep_level else max(resident + trainer["sync_buffer"], peak)
    problems: list[str] = []
    if i.requested_fraction is not None:
        fraction = i.requested_fraction
        reason = "rollout.gpu_memory_utilization"
    elif i.requested_kv_bytes is not None:
        fraction = min(1.0, math.ceil((fixed_sum + i.requested_kv_bytes) / total * 100) / 100)
        reason = f"derived from rollout.kv_cache_memory_bytes ({_gib(i.requested_kv_bytes)} + engine {_gib(fixed_sum)})"
    else:
        fraction = min(MAX_FRACTION, math.floor((usable - coexisting) / total * 100) / 100)
        reason = ("largest that fits beside the trainer's " + ("resident memory (the engine sleeps during the "
                  "update)" if i.sleep_level else "peak (no sleep mode: the engine stays awake in the update)"))
    budget = int(fraction * total) if fraction > 0 else 0
    kv = budget - fixed_sum if i.requested_kv_bytes is None else i.requested_kv_bytes
    asleep = fixed["cuda_graphs"] if i.sleep_level else budget
    if fraction <= 0 or kv < kv_floor:
        problems.append(f"the engine's KV cache would be {_gib(max(kv, 0))} (budget {_gib(max(budget, 0))} - "
                        f"weights, graphs and activations {_gib(fixed_sum)}), below its floor {_gib(kv_floor)}"
                        " (one full-length sequence, and at least the weights' size: below that decoding reads "
                        "more weights than cache and runs under half its memory-bandwidth speed)")
    awake = resident + trainer["sync_buffer"]
    if fraction > 0 and awake + budget > usable:
        problems.append(f"engine awake: trainer resident {_gib(resident)} + sync buffer "
                        f"{_gib(trainer['sync_buffer'])} + engine budget {_gib(budget)} = {_gib(awake + budget)} "
                        f"> usable {_gib(usable)}")
    if fraction > 0 and peak + asleep > usable:
        problems.append(f"update: trainer peak {_gib(peak)} + engine {'asleep' if i.sleep_level else 'awake'} "
                        f"{_gib(asleep)} = {_gib(peak + asleep)} > usable {_gib(usable)}")
    engine = {**fixed, "kv_cache": max(kv, 0)}
    host = (fixed["weights"] if i.sleep_level == 1 else 0) + (
        i.geometry.parameters * dtype_bytes(i.compute_dtype) if i.reference == "cpu" else 0)
    plan = MemoryPlan(i, trainer, resident, peak, engine, max(budget, 0), asleep, kv_floor, max(fraction, 0.0),
                      reason, usable, host, tuple(problems))
    if problems and suggest_fixes:
        plan = dataclasses.replace(plan, fixes=tuple(_fixes(i)))
    return plan


def _fixes(i: PlanInputs) -> list[str]:
    """The single changes (each a config key or launcher flag) under which the plan fits."""
    candidates: list[tuple[str, PlanInputs]] = []
    if i.requested_fraction is not None:
        candidates.append(("rollout.gpu_memory_utilization=null (the plan chooses)",
                           dataclasses.replace(i, requested_fraction=None)))
    if i.sleep_level == 0:
        candidates.append(("sleep mode (rollout.sleep_level=1)", dataclasses.replace(i, sleep_level=1)))
    if not i.gradient_checkpointing:
        candidates.append(("model.gradient_checkpointing=true", dataclasses.replace(i, gradient_checkpointing=True)))
    half = i.micro_batch_tokens // 2
    if half >= i.max_model_len:
        candidates.append((f"algorithm.max_tokens_per_micro_batch={half}",
                           dataclasses.replace(i, micro_batch_tokens=half)))
    if i.reference == "gpu":
        candidates.append(("model.reference_offload=true", dataclasses.replace(i, reference="cpu")))
        candidates.append(("no reference model (algorithm.kl_coef=0)", dataclasses.replace(i, reference="none")))
    for ranks in (2, 4, 8):
        if ranks > i.ranks:
            candidates.append((f"{ranks} ranks (torchrun --nproc_per_node {ranks})", dataclasses.replace(i, ranks=ranks)))
    fits = []
    for label, changed in candidates:
        plan = plan_memory(changed, suggest_fixes=False)
        if plan.fits:
            fits.append(f"{label}: gpu_memory_utilization {plan.gpu_memory_utilization:.2f}")
            if label.startswith(tuple(f"{r} ranks" for r in (2, 4, 8))):
                break  # the fewest ranks that fit is enough
    return fits


def parse_bytes(text: str | int) -> int:
    """``"80GiB"``, ``"141 GiB"``, ``"81559MiB"``, ``"80GB"`` (decimal) or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"memory size {text!r}: write it as e.g. 80GiB, 81559MiB or 80GB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}[unit]
    return int(number * scale)


def _gib(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB"
