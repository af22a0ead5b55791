"""Model input of a micro-batch (packed or padded) and per-token log-probs of response tokens.

Micro-batch planning (which sequences go together, and in which layout) is :mod:`deepscaler.training.micro_batches`.

* :func:`pack_sequences` concatenates the prompt+response tokens of a micro-batch into one row (no padding,
  position ids restart at 0 per sequence); :func:`pad_sequences` is the right-padded alternative.
* :func:`token_logprobs` runs a Hugging Face causal LM on either layout and returns the log-prob (and
  entropy) of every response token as ``[B, R]``, computing the LM head only on response positions, in
  float32 (float64 for a float64 model), chunk by chunk.

Packed sequences are isolated from each other without any mask tensor: transformers (≥ 4.56, checked on 5.19)
detects packing from position ids that restart (``masking_utils.find_packed_sequence_indices``) whenever
``attention_mask`` is None and no KV cache is passed, and builds a block-diagonal causal mask for sdpa/eager;
FlashAttention-2 derives ``cu_seqlens`` from the same position ids. Where that detection is missing we build
the block-diagonal mask ourselves (:func:`resolve_packed_attention`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from deepscaler.algorithms.logprobs import entropy_from_logits, logprobs_from_logits, temperature_scale
from deepscaler.rollout.memory_plan import LM_HEAD_CHUNK

logger = logging.getLogger(__name__)
PackedAttention = Literal["position_ids", "explicit_mask"]


# ------------------------------------------------------------------------------------------ response tensors
def pad_responses(values: Sequence[torch.Tensor | Sequence[float]], pad_value: float = 0.0,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Stack per-sequence response values (advantages per token, old/ref/rollout log-probs) into ``[B, R]``,
    right-padded with ``pad_value``; R = longest. Matches the layout of :func:`token_logprobs`."""
    rows = [torch.as_tensor(v, dtype=dtype) for v in values]
    width = max((row.numel() for row in rows), default=0)
    out_dtype = dtype or (rows[0].dtype if rows else torch.get_default_dtype())
    out = torch.full((len(rows), width), pad_value, dtype=out_dtype, device=device)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row.to(device=out.device, dtype=out_dtype)
    return out


def unpad_responses(values: torch.Tensor, response_lengths: Sequence[int]) -> list[torch.Tensor]:
    """Inverse of :func:`pad_responses`: ``[B, R]`` → B tensors of their true lengths."""
    return [values[i, :length] for i, length in enumerate(response_lengths)]


# ----------------------------------------------------------------------------------------------- model input
@dataclass
class ModelBatch:
    """Model inputs of one micro-batch and where its response tokens are. Build with :func:`pack_sequences`
    or :func:`pad_sequences`."""

    layout: Literal["packed", "padded"]
    """``packed``: one row, no padding; ``padded``: one row per sequence, right-padded."""
    input_ids: torch.Tensor
    """``[1, T]`` (packed, T = Σ lengths) or ``[B, L]`` (padded, L = longest) token ids."""
    position_ids: torch.Tensor
    """Same shape; restart at 0 at every sequence start."""
    attention_mask: torch.Tensor | None
    """None (packed) or ``[B, L]`` 1 on real tokens (padded)."""
    target_ids: torch.Tensor
    """Same shape as ``input_ids``: the next token, i.e. what the logits at each position predict (0 at a
    sequence's last position)."""
    token_response_mask: torch.Tensor
    """Same shape: 1 where ``target_ids`` is a response token (the positions whose log-prob trains)."""
    segment_ids: torch.Tensor
    """Same shape: index of the sequence each position belongs to (−1 on padding)."""
    response_positions: torch.Tensor
    """``[B, R]`` int64: flat index into ``input_ids.view(-1)`` of the position predicting each response token
    (0 on padding)."""
    response_mask: torch.Tensor
    """``[B, R]`` float: 1 on real response tokens."""
    response_targets: torch.Tensor
    """``[B, R]`` int64 response token ids (0 on padding)."""
    prompt_lengths: list[int]
    response_lengths: list[int]

    @property
    def num_sequences(self) -> int:
        return len(self.prompt_lengths)

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens fed to the model."""
        return sum(self.prompt_lengths) + sum(self.response_lengths)


def _check_inputs(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> None:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(response_ids)} responses")
    for i, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: the first response token needs at least one prompt token "
                             "(the BOS/chat template) to be predicted from")


def _response_index(starts: Sequence[int], prompt_lengths: Sequence[int], response_lengths: Sequence[int],
                    targets_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, R]`` positions/mask/targets of the response tokens, given where each sequence starts in the flat
    input. Response token j of sequence i sits at ``start + P + j`` and is predicted at ``start + P + j − 1``."""
    width = max(response_lengths, default=0)
    positions = torch.zeros(len(starts), width, dtype=torch.long)
    mask = torch.zeros(len(starts), width)
    for i, (start, p_len, r_len) in enumerate(zip(starts, prompt_lengths, response_lengths, strict=True)):
        positions[i, :r_len] = torch.arange(start + p_len - 1, start + p_len - 1 + r_len)
        mask[i, :r_len] = 1.0
    targets = torch.where(mask.bool(), targets_flat[positions], torch.zeros_like(positions))
    return positions, mask, targets


def pack_sequences(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                   device: torch.device | str | None = None) -> ModelBatch:
    """Concatenate each ``prompt + response`` into a single ``[1, T]`` row, position ids restarting at 0.

    Args:
        prompt_ids: B token lists (non-empty). response_ids: B token lists (may be empty).
        device: where the tensors go.
    Returns:
        A ``packed`` :class:`ModelBatch`.
    """
    _check_inputs(prompt_ids, response_ids)
    tokens: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    is_response: list[float] = []
    segments: list[int] = []
    starts: list[int] = []
    for index, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        sequence = list(prompt) + list(response)
        starts.append(len(tokens))
        tokens.extend(sequence)
        positions.extend(range(len(sequence)))
        targets.extend(sequence[1:] + [0])
        is_response.extend([0.0] * (len(prompt) - 1) + [1.0] * len(response) + [0.0])
        segments.extend([index] * len(sequence))
    prompt_lengths = [len(p) for p in prompt_ids]
    response_lengths = [len(r) for r in response_ids]
    target_tensor = torch.tensor(targets, dtype=torch.long)
    resp_positions, resp_mask, resp_targets = _response_index(starts, prompt_lengths, response_lengths,
                                                              target_tensor)
    return ModelBatch(
        layout="packed",
        input_ids=torch.tensor([tokens], dtype=torch.long, device=device),
        position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        attention_mask=None,
        target_ids=target_tensor.unsqueeze(0).to(device),
        token_response_mask=torch.tensor([is_response], device=device),
        segment_ids=torch.tensor([segments], dtype=torch.long, device=device),
        response_positions=resp_positions.to(device),
        response_mask=resp_mask.to(device),
        response_targets=resp_targets.to(device),
        prompt_lengths=prompt_lengths,
        response_lengths=response_lengths,
    )


def pad_sequences(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                  pad_token_id: int = 0, device: torch.device | str | None = None) -> ModelBatch:
    """One right-padded row per ``prompt + response`` with an attention mask (the reference layout).

    Args:
        prompt_ids, response_ids: as :func:`pack_sequences`. pad_token_id: filler id (never attended to).
    Returns:
        A ``padded`` :class:`ModelBatch` with ``input_ids`` ``[B, L]``.
    """
    _check_inputs(prompt_ids, response_ids)
    sequences = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(len(s) for s in sequences) if sequences else 0
    batch = len(sequences)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, width, dtype=torch.long)
    targets = torch.zeros(batch, width, dtype=torch.long)
    token_response_mask = torch.zeros(batch, width)
    segments = torch.full((batch, width), -1, dtype=torch.long)
    prompt_lengths = [len(p) for p in prompt_ids]
    response_lengths = [len(r) for r in response_ids]
    for i, sequence in enumerate(sequences):
        n = len(sequence)
        input_ids[i, :n] = torch.tensor(sequence)
        attention_mask[i, :n] = 1
        targets[i, : n - 1] = input_ids[i, 1:n]
        token_response_mask[i, prompt_lengths[i] - 1: n - 1] = 1.0
        segments[i, :n] = i
    resp_positions, resp_mask, resp_targets = _response_index(
        [i * width for i in range(batch)], prompt_lengths, response_lengths, targets.view(-1))
    return ModelBatch(
        layout="padded",
        input_ids=input_ids.to(device),
        position_ids=torch.arange(width).expand(batch, width).contiguous().to(device),
        attention_mask=attention_mask.to(device),
        target_ids=targets.to(device),
        token_response_mask=token_response_mask.to(device),
        segment_ids=segments.to(device),
        response_positions=resp_positions.to(device),
        response_mask=resp_mask.to(device),
        response_targets=resp_targets.to(device),
        prompt_lengths=prompt_lengths,
        response_lengths=response_lengths,
    )


# ------------------------------------------------------------------------------------ packed attention choice
_LOGGED_DECISIONS: set[tuple[str, str]] = set()
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")
"""Attention implementations that attend within each packed sequence (varlen, from restarting position ids)."""


def resolve_packed_attention(model: torch.nn.Module, request: str = "auto") -> tuple[PackedAttention, str]:
    """How packed sequences are kept from attending to each other in ``model``: ``(choice, reason)`` (see
    :func:`packed_attention_for`)."""
    return packed_attention_for(str(getattr(model.config, "_attn_implementation", None) or "eager"), request)


def packed_attention_for(implementation: str, request: str = "auto") -> tuple[PackedAttention, str]:
    """How packed sequences are kept from attending to each other under attention ``implementation``:
    ``(choice, reason)``.

    ``position_ids``: rely on transformers detecting restarting position ids (mask-free, also what
    FlashAttention varlen needs). ``explicit_mask``: pass our own 4-D block-diagonal causal mask
    (sdpa/eager only). ``request`` overrides ``auto``. The decision is logged once per (implementation, choice).
    """
    if request not in ("auto", "position_ids", "explicit_mask"):
        raise ValueError(f"unknown `packed_attention` {request!r}; valid: 'auto', 'position_ids', 'explicit_mask'")
    if request != "auto":
        choice, reason = request, f"requested packed_attention={request!r}"
        if request == "explicit_mask" and implementation not in ("sdpa", "eager"):
            raise ValueError(f"packed_attention='explicit_mask' needs attn_implementation sdpa or eager, the model "
                             f"uses {implementation!r}; use packed_attention='position_ids' (or 'auto')")
    elif implementation in VARLEN_ATTENTION:
        choice, reason = "position_ids", f"{implementation} derives cu_seqlens from restarting position ids"
    elif _transformers_detects_packing():
        choice, reason = "position_ids", (f"transformers' masking_utils.find_packed_sequence_indices builds a "
                                          f"block-diagonal {implementation} mask from restarting position ids")
    else:
        choice, reason = "explicit_mask", ("this transformers version does not detect packed sequences; "
                                           "passing a 4-D block-diagonal causal mask")
    if (implementation, choice) not in _LOGGED_DECISIONS:
        _LOGGED_DECISIONS.add((implementation, choice))
        logger.info("packed attention: %s (%s)", choice, reason)
    return choice, reason  # type: ignore[return-value]


def _transformers_detects_packing() -> bool:
    # a feature probe of the installed transformers (masking_utils arrived in 4.56), so the import stays here
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        return False
    return True


def block_diagonal_causal_mask(segment_ids: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """4-D mask letting position q attend to k iff same segment and k <= q.

    Args:
        segment_ids: ``[rows, T]``. implementation: ``sdpa`` (bool mask, True = attend) or ``eager``
            (additive float mask of ``dtype``).
    Returns:
        ``[rows, 1, T, T]``.
    """
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)) & causal & (segment_ids >= 0).unsqueeze(-1)
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segment_ids.device)  # no empty softmax rows
    allowed = allowed.unsqueeze(1)
    if implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segment_ids.device))


# ------------------------------------------------------------------------------------------------ log-probs
def token_logprobs(model: torch.nn.Module, batch: ModelBatch, temperature: float = 1.0,
                   compute_entropy: bool = False, chunk_size: int = LM_HEAD_CHUNK,
                   packed_attention: str = "auto",
                   entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob (and entropy) of every response token under ``model`` at ``temperature``.

    The backbone runs once; the LM head, ÷ temperature, log-softmax and entropy run only on the response
    positions, in float32 (float64 for a float64 model), ``chunk_size`` tokens at a time. With gradients
    enabled each chunk is checkpointed, so the ``[N, V]`` logits are never all stored for backward.

    Args:
        model: a transformers causal LM with a ``base_model_prefix`` backbone and output embeddings
            (Qwen2, Llama, Mistral …).
        batch: from :func:`pack_sequences` or :func:`pad_sequences`, on the model's device.
        temperature: the rollout temperature. compute_entropy: also return entropies.
        chunk_size: response tokens per LM-head chunk. packed_attention: see :func:`resolve_packed_attention`.
        entropy_grad: the entropy carries a gradient. False when the loss does not use it (a metric only, as
            with ``entropy_coef=0``): then no ``[chunk, vocab]`` tensor is kept and no backward runs for it; the
            gradients of the log-probs are the same.
    Returns:
        ``(logprobs [B, R], entropy [B, R] or None)``, zero on padding (``batch.response_mask``).
    """
    head = model.get_output_embeddings()
    kwargs: dict = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if batch.attention_mask is not None:
        kwargs["attention_mask"] = batch.attention_mask
    elif batch.num_sequences > 1:
        choice, _ = resolve_packed_attention(model, packed_attention)
        if choice == "explicit_mask":
            implementation = str(getattr(model.config, "_attn_implementation", None) or "eager")
            kwargs["attention_mask"] = block_diagonal_causal_mask(batch.segment_ids, implementation,
                                                                  head.weight.dtype)
    hidden = _last_hidden_state(model, kwargs)
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])

    selected = batch.response_mask.bool()
    response_hidden = flat_hidden[batch.response_positions[selected]]  # [N, H]
    targets = batch.response_targets[selected]  # [N]
    compute_dtype = torch.float64 if head.weight.dtype == torch.float64 else torch.float32
    weight = head.weight.to(compute_dtype)
    bias = head.bias.to(compute_dtype) if getattr(head, "bias", None) is not None else None
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def head_chunk(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Autocast (bf16/fp16 mixed precision) would run this matmul in 16 bits; the head stays in float32.
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = torch.nn.functional.linear(h.to(compute_dtype), weight, bias)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logits = temperature_scale(logits, temperature)
            if compute_entropy:
                entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
            else:
                entropy = logits.new_zeros(t.shape)
            return logprobs_from_logits(logits, t), entropy

    use_checkpoint = torch.is_grad_enabled() and response_hidden.requires_grad
    logp_chunks, entropy_chunks = [], []
    for start in range(0, targets.numel(), chunk_size):
        h, t = response_hidden[start: start + chunk_size], targets[start: start + chunk_size]
        if use_checkpoint:
            logp, ent = checkpoint(head_chunk, h, t, use_reentrant=False)
        else:
            logp, ent = head_chunk(h, t)
        logp_chunks.append(logp)
        entropy_chunks.append(ent)

    shape = batch.response_mask.shape
    logprobs = _scatter(logp_chunks, selected, shape, compute_dtype)
    entropy = _scatter(entropy_chunks, selected, shape, compute_dtype) if compute_entropy else None
    return logprobs, entropy


def _last_hidden_state(model: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    """The backbone's final hidden states ``[rows, T, H]`` (the LM head is applied by the caller, in chunks)."""
    backbone = getattr(model, model.base_model_prefix)
    if not _is_fsdp(model):
        return backbone(**kwargs).last_hidden_state
    # FSDP2 gathers the root's own parameters (embeddings, final norm, LM head) in the root's forward only, and
    # keeps them gathered until its backward: run the whole model with a single logit position and take the
    # backbone's output from a hook.
    captured: dict[str, torch.Tensor] = {}
    def keep(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", output)
        captured["hidden"] = hidden[0] if isinstance(hidden, tuple) else hidden

    handle = backbone.register_forward_hook(keep)
    try:
        model(**kwargs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured["hidden"]


def _is_fsdp(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def _scatter(chunks: list[torch.Tensor], selected: torch.Tensor, shape: torch.Size,
             dtype: torch.dtype) -> torch.Tensor:
    values = torch.cat(chunks) if chunks else torch.zeros(0, dtype=dtype, device=selected.device)
    out = torch.zeros(shape, dtype=dtype, device=selected.device)
    return out.masked_scatter(selected, values)
