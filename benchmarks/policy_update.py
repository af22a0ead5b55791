"""One GRPO policy update of the DeepSeek-R1-Distill-Qwen-1.5B geometry: deepscaler's update vs a plain loop.

Both sides update the same randomly initialised model (28 layers, hidden 1536, 12 q / 2 kv heads, untied LM head,
1.78 B parameters) on the same batch of random tokens (default 8 sequences x 2048 = 16K tokens: 256 prompt +
1792 response each), with AdamW and gradient checkpointing as the DeepScaleR recipe sets them, in one
optimizer step per update:

* ``deepscaler <policy>``: ``deepscaler.training.update.update_policy``, the function the trainer calls (its
  micro-batching, the LM head in fp32 chunks over response tokens only, the GRPO loss), with the attention
  implementation the resolver picks for the policy;
* ``plain <policy>``: what TRL's GRPO update runs: ``model(input_ids, logits_to_keep=...)``, temperature,
  ``selective_log_softmax`` over the full logits (TRL ``trl/trainer/utils.py``), the clipped-ratio loss,
  ``loss.backward()``, grad clip, ``torch.optim.AdamW.step()``; SDPA attention, same precision policy.

Reports tokens/s, MFU and peak GPU memory (``torch.cuda.max_memory_allocated`` over the timed updates, after a
warm-up update created the optimizer state), and the peak a simple memory model predicts (see
:func:`predicted_peak_bytes`). MFU = model FLOPs / time / peak, model FLOPs = 6 * N * tokens + attention
6 * layers * Hq * D * sum(S^2) (causal), N = parameters without the input embedding table; the recompute of
gradient checkpointing is not counted (the PaLM convention). Peak: the GPU's dense rate for the compute dtype.

    python benchmarks/policy_update.py --out policy_update.json            # GPU
    python benchmarks/policy_update.py --tiny --device cpu                  # CPU rehearsal of the code path
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from deepscaler.rollout.memory_plan import LM_HEAD_CHUNK

# R1-Distill-Qwen-1.5B (Qwen2 architecture), from its config.json.
QWEN2_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=False)
# Dense tensor-core peaks (TFLOP/s) by the vendor's datasheets (H100/H200 SXM), per compute dtype class.
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
               "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}}


VARIANTS = {
    "tf32-head": "TF32 allowed during the update: only the fp32 LM head matmuls change (the body runs in bf16)",
    "head-chunk-4096": "token_logprobs with 4096 response tokens per LM-head chunk (the default before 1024)",
}
"""What-if rows: deepscaler's bf16-mixed update with one thing changed, to size where its time and memory go."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", nargs="+", default=["bf16-mixed", "fp32-fast"])
    parser.add_argument("--plain", nargs="*", default=["bf16-mixed"], help="policies of the plain loop")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS),
                        help="what-if rows of deepscaler bf16-mixed (see VARIANTS)")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="timed updates (after one warm-up update)")
    parser.add_argument("--recipe", default="deepscaler-1.5b-8k")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (CPU rehearsal)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("policy_update.json"))
    return parser.parse_args(argv)


def model_config(tiny: bool):
    from transformers import Qwen2Config

    return Qwen2Config(**(TINY if tiny else QWEN2_1_5B))


def flop_count(config, n_params: int, seq_lens: list[int]) -> float:
    """Model FLOPs of one forward+backward: 6*N*tokens + causal attention 6*L*Hq*D*sum(S^2)."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 6 * config.num_hidden_layers * config.num_attention_heads * head_dim * sum(s * s for s in seq_lens)
    return 6.0 * n_params * sum(seq_lens) + attention


def predicted_peak_bytes(config, n_params_total: int, tokens: int, policy, chunk_tokens: int = LM_HEAD_CHUNK,
                         plain: bool = False, response_tokens: int | None = None) -> dict[str, float]:
    """A first-order memory model of one update with gradient checkpointing (bytes).

    static: master weights + gradients (param dtype) + AdamW's two fp32 moments. checkpoints: each layer's input
    ``[T, hidden]`` (fp32 residual stream). layer: one layer's recomputed activations in the compute dtype
    (q/k/v/o, MLP gate/up/act/down and norms: about ``hidden*8 + intermediate*4`` values per token). head:
    deepscaler: one fp32 LM-head chunk ``[chunk, vocab]`` times 3 (logits, log-softmax, its gradient); plain: the
    compute-dtype logits of every response token, a temperature-scaled copy, and per-row fp32 log-softmax.
    """
    param_bytes = 4 if policy.param_dtype == "float32" else 2
    compute_bytes = 2 if policy.compute_dtype in ("bfloat16", "float16") else 4
    static = n_params_total * (2 * param_bytes + 8)
    checkpoints = config.num_hidden_layers * tokens * config.hidden_size * 4
    layer = tokens * (config.hidden_size * 8 + config.intermediate_size * 4) * compute_bytes
    response_tokens = response_tokens or tokens
    if plain:
        head = response_tokens * config.vocab_size * compute_bytes * 3
    else:
        head = min(chunk_tokens, response_tokens) * config.vocab_size * 4 * 3
    return {"static": static, "checkpoints": checkpoints, "layer": layer, "head": head,
            "total": static + checkpoints + layer + head}


def build_model(config, policy, device: torch.device, attention: str):
    from transformers import AutoModelForCausalLM

    from deepscaler.precision import to_torch_dtype

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention,
                                                 dtype=to_torch_dtype(policy.param_dtype))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def make_batch(args, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.sequences)]
    responses = [torch.randint(10, vocab, (args.seq_len - args.prompt_len,), generator=gen).tolist()
                 for _ in range(args.sequences)]
    old_logprobs = [-torch.rand(len(r), generator=gen) * 5 for r in responses]
    advantages = torch.randn(args.sequences, generator=gen)
    return prompts, responses, old_logprobs, advantages


def deepscaler_update(args, config, policy_name: str, device: torch.device, variant: str | None = None) -> dict:
    """Time deepscaler's update_policy on the batch (one mini-batch = one optimizer step)."""
    import functools
    import importlib

    from deepscaler.precision import get_policy, probe_environment, resolve_attention
    from deepscaler.precision.registration import ensure_backend_registered
    from deepscaler.training.config import load_config
    from deepscaler.training.distributed import SINGLE_PROCESS
    from deepscaler.training.micro_batches import MicroBatcher, resolve_layout
    from deepscaler.training.packing import packed_attention_for
    from deepscaler.training.rollouts import Rollouts
    from deepscaler.training.schedule import build_optimizer

    update = importlib.import_module("deepscaler.training.update")  # the module, to patch a variant in
    policy = get_policy(policy_name)
    policy.apply_matmul_flags()
    original_logprobs = update.token_logprobs
    if variant == "tf32-head":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif variant == "head-chunk-4096":
        update.token_logprobs = functools.partial(original_logprobs, chunk_size=4096)
    decision = resolve_attention("trainer", config, policy, env=probe_environment())
    ensure_backend_registered(decision.backend)
    model = build_model(config, policy, device, decision.backend)
    cfg = load_config(args.recipe)
    cfg.data.train_batch_size = cfg.algorithm.ppo_mini_batch_size = args.sequences
    cfg.algorithm.ppo_epochs = 1
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    layout, layout_reason = resolve_layout(decision.backend, cfg.algorithm.sequence_layout)
    packed_attention, _ = packed_attention_for(decision.backend)
    run = SimpleNamespace(
        config=cfg, decisions=SimpleNamespace(policy=policy, device=device, packed_attention=packed_attention),
        model=model, ref_model=None, optimizer=optimizer, dist=SINGLE_PROCESS,
        scaler=torch.amp.GradScaler(device.type, enabled=policy.loss_scaling),
        batcher=MicroBatcher(layout, cfg.algorithm.max_tokens_per_micro_batch, pad_token_id=0, device=device))
    prompts, responses, old_logprobs, advantages = make_batch(args, config.vocab_size)
    batch = Rollouts(problems=[None] * len(prompts), group_ids=list(range(len(prompts))), prompt_ids=prompts,
                     response_ids=responses, rollout_logprobs=None, texts=[""] * len(prompts),
                     truncated=[False] * len(prompts), rewards=[0.0] * len(prompts))
    rows = [True] * len(prompts)

    def step():
        return update.update_policy(run, batch, advantages, old_logprobs, None, rows)

    try:
        result = _time_updates(step, args.steps, device)
    finally:
        update.token_logprobs = original_logprobs
        policy.apply_matmul_flags()
    result.update(variant=variant, attention=decision.backend, attention_reason=decision.reason, layout=layout,
                  layout_reason=layout_reason, micro_batch_tokens=cfg.algorithm.max_tokens_per_micro_batch,
                  kl="off (no reference model in this benchmark; the KL term is elementwise)")
    return _finish(result, model, optimizer, config, policy, args, plain=False)


def plain_update(args, config, policy_name: str, device: torch.device) -> dict:
    """TRL's GRPO update on the same batch: full logits of the completion positions, selective_log_softmax."""
    from deepscaler.precision import get_policy

    policy = get_policy(policy_name)
    policy.apply_matmul_flags()
    model = build_model(config, policy, device, "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    prompts, responses, old_logprobs, advantages = make_batch(args, config.vocab_size)
    input_ids = torch.tensor([p + r for p, r in zip(prompts, responses, strict=True)], device=device)
    completion = torch.tensor(responses, device=device)
    keep = completion.shape[1]
    old = torch.stack(old_logprobs).to(device)
    adv = advantages.to(device)[:, None]

    def step():
        with policy.autocast(device.type):
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           logits_to_keep=keep + 1, use_cache=False).logits
        logits = logits[:, :-1, :] / 0.6  # rollout temperature of the recipe
        logps = selective_log_softmax(logits, completion)
        ratio = torch.exp(logps - old)
        loss = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.28) * adv).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach())}

    result = _time_updates(step, args.steps, device)
    result.update(attention="sdpa", layout="padded (equal lengths: no padding)")
    return _finish(result, model, optimizer, config, policy, args, plain=True)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's ``selective_log_softmax``: gather - logsumexp for fp32/fp64, row-wise log_softmax for 16-bit."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        return selected - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    rows = []
    for row_logits, row_labels in zip(logits, index, strict=True):
        row_logps = torch.nn.functional.log_softmax(row_logits, dim=-1)
        rows.append(row_logps.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_updates(step, steps: int, device: torch.device) -> dict:
    started = time.perf_counter()
    step()  # warm-up: kernels compiled, optimizer state created
    _sync(device)
    warmup = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        metrics = step()
        _sync(device)
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"warmup_s": warmup, "step_s": times, "median_step_s": sorted(times)[len(times) // 2],
            "peak_bytes": peak, "last_metrics": {k: float(v) for k, v in (metrics or {}).items()
                                                 if isinstance(v, (int, float))}}


def _finish(result: dict, model, optimizer, config, policy, args, plain: bool) -> dict:
    n_total = sum(p.numel() for p in model.parameters())
    n_matmul = n_total - model.get_input_embeddings().weight.numel()
    seq_lens = [args.seq_len] * args.sequences
    tokens = sum(seq_lens)
    flops = flop_count(config, n_matmul, seq_lens)
    step_s = result["median_step_s"]
    dtype_class = "bf16" if policy.compute_dtype == "bfloat16" else ("tf32" if policy.allow_tf32 else "fp32")
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((rates[dtype_class] for key, rates in PEAK_TFLOPS.items() if key in name), None)
    predicted = predicted_peak_bytes(config, n_total, tokens, policy, plain=plain,
                                     response_tokens=(args.seq_len - args.prompt_len) * args.sequences)
    result.update(policy=policy.name, tokens=tokens, params_total=n_total, params_matmul=n_matmul,
                  model_tflop=flops / 1e12, tokens_per_s=tokens / step_s, achieved_tflops=flops / step_s / 1e12,
                  peak_tflops=peak, peak_class=dtype_class, mfu=(flops / step_s / 1e12 / peak) if peak else None,
                  predicted_peak_bytes=predicted, device=name)
    del model, optimizer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/policy_update.py: no CUDA GPU; rehearse with --tiny --device cpu")
        return 0
    config = model_config(args.tiny)
    runs = ([("deepscaler", p, None) for p in args.policies] + [("plain", p, None) for p in args.plain]
            + [("deepscaler", "bf16-mixed", v) for v in args.variants])
    results = []
    for kind, policy, variant in runs:
        try:
            if kind == "deepscaler":
                row = {"kind": kind, **deepscaler_update(args, config, policy, device, variant)}
            else:
                row = {"kind": kind, **plain_update(args, config, policy, device)}
        except Exception as exc:  # noqa: BLE001 - one failing side must not lose the others' figures
            row = {"kind": kind, "policy": policy, "variant": variant,
                   "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results.append(row)
        print(format_row(row), flush=True)
        args.out.write_text(json.dumps({"results": results, "ratios": ratios(results)}, indent=1, default=str))
    for line in (f"{k}: {v:.2f}" for k, v in ratios(results).items()):
        print(line)
    return 0


def ratios(results: list[dict]) -> dict[str, float]:
    """deepscaler vs plain at the same policy: tokens/s and peak memory ratios."""
    out = {}
    for ours in (r for r in results if r["kind"] == "deepscaler" and "error" not in r and not r.get("variant")):
        plain = next((r for r in results if r["kind"] == "plain" and r.get("policy") == ours["policy"]
                      and "error" not in r), None)
        if plain:
            out[f"{ours['policy']} tokens/s deepscaler / plain"] = ours["tokens_per_s"] / plain["tokens_per_s"]
            if ours["peak_bytes"] and plain["peak_bytes"]:
                out[f"{ours['policy']} peak memory deepscaler / plain"] = ours["peak_bytes"] / plain["peak_bytes"]
    return out


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['kind']:<10} {row['policy']:<10} ERROR {row['error']}"
    gib = (row["peak_bytes"] or 0) / 2**30
    mfu = f"{100 * row['mfu']:.1f} %" if row["mfu"] is not None else "-"
    kind = row["kind"] + (f" ({row['variant']})" if row.get("variant") else "")
    return (f"{kind:<10} {row['policy']:<10} {row['attention']:<16} {row['median_step_s']:.3f} s/update "
            f"{row['tokens_per_s']:9.0f} tok/s  {row['achieved_tflops']:6.1f} TFLOP/s  MFU {mfu}  peak {gib:.1f} GiB "
            f"(predicted {row['predicted_peak_bytes']['total'] / 2**30:.1f} GiB)")


if __name__ == "__main__":
    sys.exit(main())
