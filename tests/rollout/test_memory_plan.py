"""deepscaler.rollout.memory_plan against hand-computed figures: DeepSeek-R1-Distill-Qwen-1.5B in bf16-mixed, the
three DeepScaleR stages (8K/16K/24K responses, 1024-token prompts, 32768-token micro-batches, checkpointing, a
reference model) on 1 x 80 GiB, 8 x 80 GiB and 1 x 141 GiB, with and without sleep mode."""

from __future__ import annotations

import math

import pytest

from deepscaler.rollout.memory_plan import (
    GiB,
    MemoryPlanError,
    ModelGeometry,
    PlanInputs,
    parse_bytes,
    plan_memory,
)

R1_1_5B = ModelGeometry(num_layers=28, hidden_size=1536, intermediate_size=8960, num_heads=12, num_kv_heads=2,
                        head_dim=128, vocab_size=151936, tied_embeddings=False, attention_bias=True)
STAGES = {"8k": 1024 + 8192, "16k": 1024 + 16384, "24k": 1024 + 24576}  # engine context = prompt + response

# ---- the hand computation, shared by the tests ------------------------------------------------------------------
# parameters: q 1536x1536 + bias 1536, k and v 1536x256 + bias 256, o 1536x1536, MLP 3 x 1536x8960, two norms
LAYER = (1536 * 1536 + 1536) + 2 * (1536 * 256 + 256) + 1536 * 1536 + 3 * 1536 * 8960 + 2 * 1536  # 46,797,824
EMBEDDINGS = 2 * 151936 * 1536  # input embeddings + the untied LM head
P = EMBEDDINGS + 28 * LAYER + 1536  # + final norm = 1,777,088,000 (the "1.78 B" of the model card)
CONTEXT = 1 * GiB  # CUDA context per process
NCCL = GiB // 2  # per process with data parallelism
SYNC = 151936 * 1536 * 4  # the largest tensor gathered by the sync, fp32
# engine: bf16 weights, 1 GiB of CUDA graphs, a 16384-token prefill through the MLP in bf16 and the sampler's three
# fp32 [256, vocab] tensors
ENGINE_FIXED = P * 2 + 1 * GiB + (16384 * (2 * 8960 + 4 * 1536) * 2 + 3 * 256 * 151936 * 4)
# the trainer sends response tokens through the LM head in chunks of 1024 (token_logprobs' default); a chunk's
# backward holds five fp32 [1024, vocab] tensors = 2.9 GiB
LM_HEAD = 5 * 1024 * 151936 * 4
FINAL_HIDDEN = 2 * 32768 * 1536 * 4  # final hidden states + their gathered response rows, fp32


def one_rank() -> tuple[int, int]:
    """(resident, peak) of the trainer on one GPU: fp32 master weights, grads and AdamW, bf16 reference."""
    resident = P * 4 + 2 * P * 4 + P * 2 + CONTEXT
    checkpoints = 28 * 32768 * 1536 * 4  # layer inputs, fp32 residual stream
    # one layer recomputed, per token: two fp32 norm inputs 2x1536x4, bf16 norm outputs, attention output, o_proj
    # input and q/k/v (12 + 2 + 2 heads of 128) (4x1536 + 16x128)x2, bf16 gate, up, act(gate) and product 4x8960x2
    layer = 32768 * (2 * 1536 * 4 + (4 * 1536 + 16 * 128) * 2 + 4 * 8960 * 2)  # 3.06 GiB
    # the plan keeps the larger of the two; with 1024-token chunks it is the recomputed layer (3.06 > 2.90 GiB)
    assert layer > LM_HEAD
    return resident, resident + P * 4 + checkpoints + max(layer, LM_HEAD) + FINAL_HIDDEN


def eight_ranks() -> tuple[int, int]:
    """(resident, peak) per rank with FSDP2 over 8 ranks: sharded weights, grads and AdamW; replicated bf16
    reference; the root (fp32 embeddings + head) and two bf16 layers gathered; bf16 residual stream."""
    shard = math.ceil(P / 8)
    resident = shard * 4 + 2 * shard * 4 + P * 2 + CONTEXT + NCCL
    gathered = EMBEDDINGS * 4 + 2 * LAYER * 2
    checkpoints = 28 * 32768 * 1536 * 2
    # one layer recomputed, per token: as on one rank but with the two norm inputs in bf16 (2x1536x2)
    layer = 32768 * (2 * 1536 * 2 + (4 * 1536 + 16 * 128) * 2 + 4 * 8960 * 2)  # 2.88 GiB
    # the larger of the two: here the LM-head chunk, just (2.90 > 2.88 GiB)
    assert layer < LM_HEAD
    return resident, resident + shard * 4 + gathered + checkpoints + max(layer, LM_HEAD) + FINAL_HIDDEN


def fraction(total: int, coexisting: int) -> float:
    """Largest hundredth that fits beside ``coexisting`` in 95 % of the card."""
    return math.floor((int(total * 0.95) - coexisting) / total * 100) / 100


def plan(context: int, ranks: int, gib: int, sleep: int, **changes) -> object:
    return plan_memory(PlanInputs(R1_1_5B, gib * GiB, context, 32768, ranks=ranks, sleep_level=sleep, **changes))


def test_geometry_of_the_1_5b_model():
    assert LAYER == 46_797_824 and P == 1_777_088_000
    assert R1_1_5B.parameters == P and R1_1_5B.layer_parameters == LAYER
    assert R1_1_5B.kv_bytes_per_token("bfloat16") == 2 * 28 * 2 * 128 * 2 == 28672


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("ranks", "gib"), [(1, 80), (8, 80), (1, 141)])
@pytest.mark.parametrize("sleep", [1, 0])
def test_stage_machine_and_sleep_mode(stage, ranks, gib, sleep):
    context, total = STAGES[stage], gib * GiB
    resident, peak = one_rank() if ranks == 1 else eight_ranks()
    result = plan(context, ranks, gib, sleep)
    assert (result.trainer_resident, result.trainer_peak) == (resident, peak)
    assert result.trainer_peak_allocated == peak - CONTEXT - (NCCL if ranks > 1 else 0)
    # asleep, the engine gives the update everything but its CUDA graphs, so only the resident trainer (and the
    # tensor the sync gathers) shares the GPU with it; awake in the update, the trainer's peak does
    coexisting = resident + SYNC if sleep else peak
    expected = fraction(total, coexisting)
    assert result.gpu_memory_utilization == expected
    assert result.engine["kv_cache"] == int(expected * total) - ENGINE_FIXED
    assert result.kv_sequences == result.engine["kv_cache"] // (28672 * context)
    assert result.fits, result.lines()


def test_the_figures_of_the_table():
    """The verdicts as the docs print them: fraction and KV cache (GiB) per machine and sleep mode (the context
    only changes how many full-length sequences fit)."""
    figures = {(ranks, gib, sleep): (plan(STAGES["8k"], ranks, gib, sleep).gpu_memory_utilization,
                                     round(plan(STAGES["8k"], ranks, gib, sleep).engine["kv_cache"] / GiB, 1))
               for ranks, gib in ((1, 80), (8, 80), (1, 141)) for sleep in (1, 0)}
    assert figures == {(1, 80, 1): (0.63, 44.9), (1, 80, 0): (0.45, 30.5), (8, 80, 1): (0.84, 61.7),
                       (8, 80, 0): (0.75, 54.5), (1, 141, 1): (0.77, 103.1), (1, 141, 0): (0.67, 89.0)}
    assert [plan(c, 1, 80, 1).kv_sequences for c in STAGES.values()] == [182, 96, 65]


def test_deepscalers_fraction_does_not_fit_one_80_gib_gpu_and_the_fixes_are_named():
    refused = plan(STAGES["8k"], 1, 80, 0, requested_fraction=0.85)
    assert not refused.fits
    budget = int(0.85 * 80 * GiB)
    resident, peak = one_rank()
    assert any(f"{(resident + SYNC + budget) / GiB:.1f} GiB > usable" in p for p in refused.problems)
    assert any(f"{(peak + budget) / GiB:.1f} GiB > usable" in p for p in refused.problems)
    assert refused.fixes == ("rollout.gpu_memory_utilization=null (the plan chooses): gpu_memory_utilization 0.45",)
    with pytest.raises(MemoryPlanError, match="does not fit") as error:
        refused.check()
    assert "fixes that fit: rollout.gpu_memory_utilization=null" in str(error.value)
    # on 8 ranks 0.85 misses by 0.2 GiB even asleep (resident 7.3 + sync 0.9 + 68.0 > 76.0 GiB usable); 0.84 fits
    # with sleep mode and not without it (the update's peak of 15.9 GiB + 67.2 GiB)
    eight = plan(STAGES["8k"], 8, 80, 1, requested_fraction=0.85)
    assert not eight.fits and eight.fixes[0].endswith("gpu_memory_utilization 0.84")
    assert plan(STAGES["8k"], 8, 80, 1, requested_fraction=0.84).fits
    assert not plan(STAGES["8k"], 8, 80, 0, requested_fraction=0.84).fits


def test_without_checkpointing_the_activations_do_not_fit_and_each_fix_is_checked():
    refused = plan(STAGES["8k"], 1, 80, 0, gradient_checkpointing=False)
    # every layer keeps ~98 KiB per token: 28 x 32768 x 100352 B = 86 GiB, more than the card
    assert refused.trainer["activations"] > 80 * GiB and not refused.fits
    assert any(f.startswith("model.gradient_checkpointing=true") for f in refused.fixes)
    assert not any(f.startswith("sleep mode") for f in refused.fixes)  # sleeping cannot shrink the trainer
    for fix in refused.fixes:
        assert "gpu_memory_utilization 0." in fix


def test_an_explicit_kv_size_derives_the_fraction():
    kv = 20 * GiB
    result = plan(STAGES["8k"], 1, 80, 1, requested_kv_bytes=kv)
    assert result.gpu_memory_utilization == math.ceil((ENGINE_FIXED + kv) / (80 * GiB) * 100) / 100 == 0.32
    assert result.engine["kv_cache"] == kv and result.fits


def test_the_printed_block():
    lines = plan(STAGES["8k"], 1, 80, 1).lines()
    assert lines[0].startswith("memory plan (1 x 80.0 GiB; per rank; sleep mode level 1")
    assert any("gpu_memory_utilization 0.63" in line for line in lines) and lines[-1] == "  verdict: fits"


def test_inputs_are_validated_and_sizes_parsed():
    with pytest.raises(ValueError, match="reference placement"):
        plan(STAGES["8k"], 1, 80, 1, reference="disk")
    with pytest.raises(ValueError, match="sleep level 3"):
        plan(STAGES["8k"], 1, 80, 3)
    assert parse_bytes("80GiB") == 80 * GiB and parse_bytes("81559MiB") == 81559 << 20
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes(" 141 GiB ") == 141 * GiB
    with pytest.raises(ValueError, match="80GiB"):
        parse_bytes("eighty")


def test_an_offloaded_reference_leaves_the_gpu_to_the_engine():
    offloaded = plan(STAGES["8k"], 1, 80, 1, reference="cpu")
    resident, peak = one_rank()
    # the bf16 reference (P x 2 bytes) leaves the resident memory; the update's peak never held it
    assert offloaded.trainer_resident == resident - P * 2 and offloaded.trainer_peak == peak - P * 2
    assert offloaded.gpu_memory_utilization == fraction(80 * GiB, resident - P * 2 + SYNC) == 0.67
    assert offloaded.host_bytes == P * 2 + P * 2  # the sleeping engine's bf16 weights + the reference
