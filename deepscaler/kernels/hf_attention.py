"""transformers integration: ``attn_implementation="deepscaler_flash"`` runs :func:`flash_attention`.

Call :func:`register_transformers_attention` once (before ``from_pretrained``), then load the model with
``attn_implementation="deepscaler_flash"``. Input layouts handled, in this order:

1. explicit packing kwargs (``cu_seq_lens_q/k``, ``max_length_q/k``, as transformers' FlashAttentionKwargs);
2. a 2-D padding mask (padded batches, generation with left padding): unpadded to packed sequences;
3. packed sequences in one row, detected from ``position_ids`` restarts (how the trainer packs micro-batches);
4. otherwise a dense batch (also decoding with a KV cache: causal masks are bottom-right aligned).

The dot precision for fp32 models is ``config.deepscaler_attention_precision`` (set it with
:func:`set_attention_precision`), overridable per call with the ``attention_precision=`` model kwarg, and
defaults to :data:`DEFAULT_PRECISION` (fp32-accurate).
"""

from __future__ import annotations

from typing import Any

import torch

from deepscaler.kernels.flash_attention import PRECISIONS, flash_attention

# transformers is imported inside the functions that use it: importing deepscaler.kernels (which precision.probe
# does on every environment probe) stays free of transformers.

ATTENTION_NAME = "deepscaler_flash"
DEFAULT_PRECISION = "bf16x6"
CONFIG_ATTRIBUTE = "deepscaler_attention_precision"


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Packed-sequence boundaries from one row of position ids.

    A new sequence starts wherever the position does not continue the previous one (``p[t] != p[t-1] + 1``).
    Shapes: ``position_ids [T]`` or ``[1, T]`` -> (``cu_seqlens [num_seqs + 1]`` int32, longest length), or
    ``None`` when the row holds a single sequence.
    """
    pos = position_ids.reshape(-1)
    if pos.numel() < 2:
        return None
    starts = torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1
    if starts.numel() == 0:
        return None
    zero = torch.zeros(1, dtype=torch.int32, device=pos.device)
    end = torch.full((1,), pos.numel(), dtype=torch.int32, device=pos.device)
    cu_seqlens = torch.cat([zero, starts.to(torch.int32), end])
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def set_attention_precision(model_or_config: Any, precision: str) -> None:
    """Choose the dot precision the kernel uses for this (fp32) model; one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = getattr(model_or_config, "config", model_or_config)
    setattr(config, CONFIG_ATTRIBUTE, precision)


def _precision(module: torch.nn.Module, kwargs: dict[str, Any]) -> str:
    precision = kwargs.get("attention_precision")
    if precision is None:
        precision = getattr(getattr(module, "config", None), CONFIG_ATTRIBUTE, None) or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"{CONFIG_ATTRIBUTE} / attention_precision must be one of {PRECISIONS}, "
                         f"got {precision!r}")
    return precision


def deepscaler_flash_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface function. ``query [B, Hq, Sq, D]``, ``key/value [B, Hkv, Sk, D]`` ->
    (``[B, Sq, Hq, D]``, None)."""
    if dropout:
        raise ValueError(f"{ATTENTION_NAME} has no attention dropout (got {dropout}); set "
                         "config.attention_dropout=0.0")
    if sliding_window is not None:
        raise ValueError(f"{ATTENTION_NAME} has no sliding window (got {sliding_window}); set "
                         "config.use_sliding_window=False or use attn_implementation='sdpa'")
    if softcap:
        raise ValueError(f"{ATTENTION_NAME} has no logit softcap (got {softcap}); use attn_implementation='eager'")
    precision = _precision(module, kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    common = dict(causal=causal, precision=precision, softmax_scale=scaling)
    batch, heads_q, seq_q, head_dim = query.shape
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, S, H, D] views

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and cu_k is not None:
        out = flash_attention(q.reshape(-1, heads_q, head_dim), k.reshape(-1, *k.shape[2:]),
                              v.reshape(-1, *v.shape[2:]), cu_seqlens=cu_q, cu_seqlens_k=cu_k,
                              max_seqlen=_as_int(kwargs.get("max_length_q")),
                              max_seqlen_k=_as_int(kwargs.get("max_length_k")), **common)
        return out.view(batch, seq_q, heads_q, head_dim), None

    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"{ATTENTION_NAME} takes a 2-D padding mask [batch, kv_len], got shape "
                             f"{tuple(attention_mask.shape)}; pass no custom 4-D mask (use packing instead)")
        from transformers.modeling_flash_attention_utils import _pad_input, _unpad_input, _upad_input

        q_packed, k_packed, v_packed, indices_q, (cu_q, cu_k), (max_q, max_k) = _upad_input(
            q, k, v, attention_mask, seq_q, _unpad_input)
        out = flash_attention(q_packed, k_packed, v_packed, cu_seqlens=cu_q, cu_seqlens_k=cu_k,
                              max_seqlen=int(max_q), max_seqlen_k=int(max_k), **common)
        return _pad_input(out, indices_q, batch, seq_q), None

    position_ids = kwargs.get("position_ids")
    if batch == 1 and position_ids is not None and k.shape[1] == seq_q:
        packed = cu_seqlens_from_position_ids(position_ids)
        if packed is not None:
            cu_seqlens, max_seqlen = packed
            out = flash_attention(q[0], k[0], v[0], cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, **common)
            return out.unsqueeze(0), None

    return flash_attention(q, k, v, **common), None


def _as_int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False,
                     **kwargs: Any) -> torch.Tensor:
    """flash-attn-style entry point (``[B, S, H, D]``) backed by this kernel (see ``_teach_flash_preload``)."""
    _reject_unsupported(dropout_p, kwargs)
    return flash_attention(q, k, v, causal=causal, softmax_scale=softmax_scale, precision=DEFAULT_PRECISION)


def _flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p: float = 0.0,
                            softmax_scale: float | None = None, causal: bool = False, **kwargs: Any) -> torch.Tensor:
    """flash-attn-style packed entry point (``[T, H, D]``) backed by this kernel."""
    _reject_unsupported(dropout_p, kwargs)
    return flash_attention(q, k, v, causal=causal, cu_seqlens=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                           max_seqlen=_as_int(max_seqlen_q), max_seqlen_k=_as_int(max_seqlen_k),
                           softmax_scale=softmax_scale, precision=DEFAULT_PRECISION)


def _reject_unsupported(dropout_p: float, kwargs: dict[str, Any]) -> None:
    if dropout_p:
        raise ValueError(f"{ATTENTION_NAME} has no attention dropout (got dropout_p={dropout_p})")
    window = kwargs.get("window_size")
    if window is not None and tuple(window) != (-1, -1):
        raise ValueError(f"{ATTENTION_NAME} has no sliding window (got window_size={window})")
    if kwargs.get("softcap"):
        raise ValueError(f"{ATTENTION_NAME} has no logit softcap (got softcap={kwargs['softcap']})")


def _teach_flash_preload(name: str) -> None:
    """transformers 5.x treats every attention implementation whose name contains "flash" as a FlashAttention
    kernel: ``from_pretrained``/``set_attn_implementation`` pre-import it through
    ``modeling_flash_attention_utils._lazy_imports``, which for an unknown name tries a hub download and fails.
    Wrap that import step so our name resolves to flash-attn-style entry points backed by this kernel; every other
    name goes to transformers' own code unchanged. No-op on versions without that step."""
    from transformers import modeling_flash_attention_utils as fa_utils

    lazy_imports = getattr(fa_utils, "_lazy_imports", None)
    if lazy_imports is None:
        return
    names = getattr(lazy_imports, "deepscaler_names", None)
    if names is not None:
        names.add(name)
        return

    def _lazy_imports_with_deepscaler(implementation, *args, **kwargs):
        if implementation in _lazy_imports_with_deepscaler.deepscaler_names:
            return _flash_attn_func, _flash_attn_varlen_func, None, fa_utils._pad_input, fa_utils._unpad_input
        return lazy_imports(implementation, *args, **kwargs)

    _lazy_imports_with_deepscaler.deepscaler_names = {name}
    fa_utils._lazy_imports = _lazy_imports_with_deepscaler


def register_transformers_attention(name: str = ATTENTION_NAME) -> str:
    """Register the attention function and its mask function (transformers v5 drops the mask of attention
    implementations without one); idempotent. Returns ``name`` for ``attn_implementation=``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, deepscaler_flash_attention_forward)
    # Same mask contract as FlashAttention: None, or the 2-D padding mask when there is padding.
    AttentionMaskInterface.register(name, flash_attention_mask)
    if "flash" in name:
        _teach_flash_preload(name)
    return name
