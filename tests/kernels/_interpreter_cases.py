"""Kernel checks that need Triton's CPU interpreter, run in a separate process by test_flash_attention_cpu.py.

Triton chooses between compiling and interpreting when ``@triton.jit`` functions are *defined* (its own
standard library included, at ``import triton``), so TRITON_INTERPRET=1 must be set before triton is imported
and would leak into every other test of a shared pytest process. This script sets it first, runs every case,
and writes ``{case: metrics}`` (or ``{case: {"error": traceback}}``) as JSON; the pytest side asserts.

    TRITON_INTERPRET=1 python tests/kernels/_interpreter_cases.py --out cases.json [--only NAME ...]
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from deepscaler.kernels import flash_attention  # noqa: E402

CASES: dict[str, Callable[[], dict]] = {}


def case(fn: Callable[[], dict]) -> Callable[[], dict]:
    CASES[fn.__name__] = fn
    return fn


def reference(q, k, v, causal: bool):
    """float64 attention. q [B,Sq,Hq,D], k/v [B,Sk,Hkv,D] -> [B,Sq,Hq,D]; causal is bottom-right aligned."""
    group = q.shape[2] // k.shape[2]
    k, v = (x.double().repeat_interleave(group, dim=2) for x in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * q.shape[-1] ** -0.5
    if causal:
        seq_q, seq_k = q.shape[1], k.shape[1]
        visible = torch.ones(seq_q, seq_k, dtype=torch.bool).tril(seq_k - seq_q)
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def relerr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().double() - ref.detach()).norm() / ref.detach().norm())


def _inputs(shape_q, shape_kv, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=gen).to(dtype)
    k = torch.randn(*shape_kv, generator=gen).to(dtype)
    v = torch.randn(*shape_kv, generator=gen).to(dtype)
    grad = torch.randn(*shape_q, generator=gen).to(dtype)
    return q, k, v, grad


def _fwd_bwd_errors(q, k, v, grad, causal: bool, precision: str, **kwargs) -> dict:
    """Batched fwd+bwd through the kernel vs float64 autograd of the reference."""
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out = flash_attention(qg, kg, vg, causal=causal, precision=precision, **kwargs)
    out.backward(grad)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, causal)
    ref.backward(grad.double())
    return {"out": relerr(out, ref), "dq": relerr(qg.grad, q64.grad), "dk": relerr(kg.grad, k64.grad),
            "dv": relerr(vg.grad, v64.grad), "out_dtype": str(out.dtype), "dq_dtype": str(qg.grad.dtype)}


@case
def causal_gqa_d32_ieee() -> dict:
    # 37 rows: three 16-row tiles, the last one partial; 4 query heads share 2 KV heads.
    return _fwd_bwd_errors(*_inputs((2, 37, 4, 32), (2, 37, 2, 32), seed=1), causal=True, precision="ieee")


@case
def noncausal_mha_d64_ieee() -> dict:
    return _fwd_bwd_errors(*_inputs((1, 24, 2, 64), (1, 24, 2, 64), seed=2), causal=False, precision="ieee")


@case
def causal_gqa_d32_bf16x6() -> dict:
    return _fwd_bwd_errors(*_inputs((1, 40, 4, 32), (1, 40, 2, 32), seed=3), causal=True, precision="bf16x6")


@case
def causal_gqa_d32_bf16x3() -> dict:
    return _fwd_bwd_errors(*_inputs((1, 40, 4, 32), (1, 40, 2, 32), seed=3), causal=True, precision="bf16x3")


@case
def causal_gqa_rectangular_tiles() -> dict:
    """Tiles of unequal sides (as the GPU tile table uses) through the tiles= override: every masked edge of the
    three kernels' loops and prologues, with 45 rows (no tile multiple)."""
    from deepscaler.kernels.tiles import TileConfig

    tiles = {"fwd": TileConfig(32, 16, 4, 1), "dkdv": TileConfig(16, 32, 4, 1), "dq": TileConfig(32, 16, 4, 1)}
    return _fwd_bwd_errors(*_inputs((1, 45, 4, 32), (1, 45, 2, 32), seed=3), causal=True, precision="bf16x6",
                           tiles=tiles)


@case
def decode_bottom_right_causal() -> dict:
    # 3 new queries against 29 cached keys: query i sees keys <= i + 26 (KV-cache decoding).
    return _fwd_bwd_errors(*_inputs((2, 3, 2, 32), (2, 29, 1, 32), seed=4), causal=True, precision="ieee")


@case
def bf16_inputs() -> dict:
    return _fwd_bwd_errors(*_inputs((1, 33, 2, 32), (1, 33, 1, 32), seed=5, dtype=torch.bfloat16), causal=True,
                           precision="bf16x3")


@case
def fp16_inputs() -> dict:
    return _fwd_bwd_errors(*_inputs((1, 33, 2, 32), (1, 33, 1, 32), seed=5, dtype=torch.float16), causal=True,
                           precision="ieee")


def _varlen(causal: bool, seqs_q: list[int], seqs_k: list[int], heads=(4, 1), seed: int = 6) -> dict:
    """Packed sequences vs each sequence through the float64 reference alone (MQA: one KV head)."""
    gen = torch.Generator().manual_seed(seed)
    hq, hkv = heads
    q = torch.randn(sum(seqs_q), hq, 32, generator=gen)
    k = torch.randn(sum(seqs_k), hkv, 32, generator=gen)
    v = torch.randn(sum(seqs_k), hkv, 32, generator=gen)
    grad = torch.randn_like(q)
    cu_q = torch.tensor([0, *torch.tensor(seqs_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(seqs_k).cumsum(0).tolist()], dtype=torch.int32)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    extra = {} if seqs_q == seqs_k else {"cu_seqlens_k": cu_k, "max_seqlen_k": max(seqs_k)}
    out = flash_attention(qg, kg, vg, causal=causal, cu_seqlens=cu_q, max_seqlen=max(seqs_q), precision="ieee",
                          **extra)
    out.backward(grad)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    refs = [reference(q64[cu_q[i]:cu_q[i + 1]][None], k64[cu_k[i]:cu_k[i + 1]][None],
                      v64[cu_k[i]:cu_k[i + 1]][None], causal)[0] for i in range(len(seqs_q))]
    ref = torch.cat(refs)
    ref.backward(grad.double())
    return {"out": relerr(out, ref), "dq": relerr(qg.grad, q64.grad), "dk": relerr(kg.grad, k64.grad),
            "dv": relerr(vg.grad, v64.grad), "out_shape": list(out.shape)}


@case
def varlen_causal_mqa() -> dict:
    return _varlen(True, [5, 25, 17], [5, 25, 17])


@case
def varlen_noncausal_gqa() -> dict:
    return _varlen(False, [9, 20], [9, 20], heads=(4, 2), seed=7)


@case
def varlen_causal_longer_keys() -> dict:
    return _varlen(True, [4, 18], [11, 30], heads=(2, 1), seed=8)


@case
def precision_ladder() -> dict:
    """Forward error of each mode on the same fp32 inputs, and of plain bf16 attention (bf16-rounded inputs,
    bf16 dots) against the same fp32-input reference: shows the bf16 split really happens."""
    q, k, v, _ = _inputs((1, 64, 2, 64), (1, 64, 2, 64), seed=9)
    ref = reference(q, k, v, True)
    errors = {p: relerr(flash_attention(q, k, v, causal=True, precision=p), ref)
              for p in ("ieee", "tf32x3", "bf16x6", "bf16x3")}
    errors["bf16"] = relerr(flash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True), ref)
    return errors


# ----------------------------------------------------------------------------------------------------------
# transformers integration on the tiny Qwen2 model
# ----------------------------------------------------------------------------------------------------------
_TINY_DIR: list[str] = []


def _tiny_models():
    """(eager model, model loaded with attn_implementation="deepscaler_flash" at precision ieee), same weights."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from deepscaler.kernels import register_transformers_attention, set_attention_precision
    from deepscaler.models.tiny import save_tiny_model

    if not _TINY_DIR:
        _TINY_DIR.append(str(save_tiny_model(tempfile.mkdtemp(prefix="tiny_qwen2_"), seed=0)))
    name = register_transformers_attention()
    eager = AutoModelForCausalLM.from_pretrained(_TINY_DIR[0], attn_implementation="eager").eval()
    ours = AutoModelForCausalLM.from_pretrained(_TINY_DIR[0], attn_implementation=name).eval()
    set_attention_precision(ours, "ieee")
    return eager, ours


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@case
def qwen2_logits_vs_eager() -> dict:
    eager, ours = _tiny_models()
    gen = torch.Generator().manual_seed(10)
    ids = torch.randint(8, 200, (2, 21), generator=gen)
    # Left padding in row 1 (generation-style batch): exercises the unpad -> packed -> pad path.
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    with torch.no_grad():
        dense = {"max_abs": float((ours(ids).logits - eager(ids).logits).abs().max())}
        ref = eager(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        dense["padded_max_abs"] = float((got - ref)[mask.bool()].abs().max())
        dense["precision_default_bf16x6_max_abs"] = float(
            (ours(ids, attention_precision="bf16x6").logits - eager(ids).logits).abs().max())
    dense["attn_implementation"] = ours.config._attn_implementation
    return dense


@case
def qwen2_packed_position_ids() -> dict:
    """Two sequences packed in one row (position ids restart) == the two sequences run separately."""
    eager, ours = _tiny_models()
    gen = torch.Generator().manual_seed(11)
    a, b = torch.randint(8, 200, (1, 13), generator=gen), torch.randint(8, 200, (1, 9), generator=gen)
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(13), torch.arange(9)])[None]
    with torch.no_grad():
        got = ours(packed, position_ids=position_ids).logits[0]
        separate = torch.cat([eager(a).logits[0], eager(b).logits[0]])
        unpacked_eager = eager(packed, position_ids=position_ids).logits[0]  # eager sees one long sequence
    return {"packed_vs_separate_max_abs": float((got - separate).abs().max()),
            "eager_cross_contamination_max_abs": float((unpacked_eager - separate).abs().max())}


@case
def qwen2_gradients_vs_eager() -> dict:
    eager, ours = _tiny_models()
    gen = torch.Generator().manual_seed(12)
    ids = torch.randint(8, 200, (2, 17), generator=gen)
    for model in (eager, ours):
        model(ids, labels=ids).loss.backward()
    worst = max(_max_rel(p.grad, r.grad) for p, r in zip(ours.parameters(), eager.parameters(), strict=True))
    return {"max_param_grad_rel": worst}


@case
def qwen2_generate_matches_eager() -> dict:
    """Greedy decoding with a KV cache (queries shorter than keys: bottom-right causal)."""
    eager, ours = _tiny_models()
    ids = torch.tensor([[1, 4, 60, 61, 62, 5]])
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True,
                    return_dict_in_generate=True)
    with torch.no_grad():
        ref, got = eager.generate(ids, **settings), ours.generate(ids, **settings)
    generated = [(a, b) for a, b in zip(got.sequences[0, ids.shape[1]:].tolist(),
                                        ref.sequences[0, ids.shape[1]:].tolist(), strict=False)]
    # scores are comparable up to and including the first step where the greedy choices part (same inputs)
    steps = next((i for i, (a, b) in enumerate(generated) if a != b), len(generated) - 1) + 1
    scores_diff = max(float((got.scores[i] - ref.scores[i]).abs().max()) for i in range(steps))
    # eager's top-1 minus top-2 score per step: a greedy choice can only differ between two kernels at a near-tie
    margins = [float(top[0, 0] - top[0, 1]) for top in (s.topk(2, dim=-1).values for s in ref.scores)]
    return {"eager": ref.sequences[0].tolist(), "ours": got.sequences[0].tolist(), "scores_max_abs": scores_diff,
            "prompt_length": ids.shape[1], "eager_margins": margins}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for name, fn in CASES.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - reported to the pytest side
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
