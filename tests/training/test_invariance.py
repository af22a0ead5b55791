"""Gradient invariance of the actor loss (float64, CPU, tiny Qwen2).

The gradient of a mini-batch must not depend on how it is cut into micro-batches (gradient accumulation),
on the layout (packed vs padded), or on the order of sequences — for every loss-aggregation mode with the
KL and entropy terms on. The last test shows that the per-micro-batch mean verl 0.1 used is *not* invariant,
so these comparisons can fail.
"""

import pytest
import torch

from deepscaler.algorithms import (
    LOSS_AGGREGATIONS,
    LossNormalizer,
    PolicyLossConfig,
    compute_policy_loss,
    sum_metrics,
)
from deepscaler.training.micro_batches import plan_micro_batches
from deepscaler.training.packing import (
    pack_sequences,
    pad_responses,
    pad_sequences,
    token_logprobs,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

TEMPERATURE = 0.6
MAX_RESPONSE = 12
REL_TOL = 1e-10
"""model64 computes in float64 throughout, so micro-batching, layout and order change only float64 rounding
(measured relative error <= 1e-15); 1e-10 leaves headroom on any CPU and thread count, while the verl-0.1
normaliser below is off by > 0.1 and a single float32 step would be off by ~1e-8."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def minibatch(model64):
    """Eight sequences with per-token old/ref/rollout log-probs near the current policy and mixed advantages;
    sequence 5 is 'truncated' and masked out (overlong filtering)."""
    gen = torch.Generator().manual_seed(0)
    prompt_lengths = [4, 7, 3, 9, 5, 6, 2, 8]
    response_lengths = [9, 1, 12, 5, 7, 12, 3, 10]
    prompts = [torch.randint(1, 270, (n,), generator=gen).tolist() for n in prompt_lengths]
    responses = [torch.randint(1, 270, (n,), generator=gen).tolist() for n in response_lengths]
    with torch.no_grad():
        current, _ = token_logprobs(model64, pad_sequences(prompts, responses), TEMPERATURE)

    def near(scale):  # per-sequence lists of log-probs perturbed around the current policy
        return [current[i, :n] + scale * torch.randn(n, generator=gen, dtype=torch.float64)
                for i, n in enumerate(response_lengths)]

    return {
        "prompts": prompts,
        "responses": responses,
        "old": near(0.3),  # large enough that some ratios leave [0.8, 1.28]
        "ref": near(0.5),
        "rollout": near(0.2),
        "advantages": torch.randn(len(prompts), generator=gen, dtype=torch.float64),
        "keep": [0.0 if i == 5 else 1.0 for i in range(len(prompts))],
    }


def _train_mask(data, indices, batch):
    keep = torch.tensor([data["keep"][i] for i in indices], dtype=torch.float64)
    return batch.response_mask.double() * keep.unsqueeze(-1)


def accumulate_gradient(model, data, plan, layout, config, per_micro_normalizer=False):
    """Run the mini-batch as the micro-batches of ``plan`` and return (flat gradient, summed metrics)."""
    model.zero_grad(set_to_none=True)
    build = pack_sequences if layout == "packed" else pad_sequences
    batches = [build([data["prompts"][i] for i in mb], [data["responses"][i] for i in mb]) for mb in plan]
    global_norm = LossNormalizer.from_response_mask(
        [_train_mask(data, mb, b) for mb, b in zip(plan, batches, strict=True)], token_sum_scale=MAX_RESPONSE)
    metrics = []
    for mb, batch in zip(plan, batches, strict=True):
        mask = _train_mask(data, mb, batch)
        norm = LossNormalizer.from_response_mask(mask, MAX_RESPONSE) if per_micro_normalizer else global_norm
        logp, entropy = token_logprobs(model, batch, TEMPERATURE, compute_entropy=True)
        loss, m = compute_policy_loss(
            logp, pad_responses([data["old"][i] for i in mb]), data["advantages"][mb], mask, norm, config,
            ref_logprobs=pad_responses([data["ref"][i] for i in mb]), entropy=entropy,
            rollout_logprobs=pad_responses([data["rollout"][i] for i in mb]))
        loss.backward()
        metrics.append(m)
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grad, sum_metrics(metrics)


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def _config(mode, tis=False):
    return PolicyLossConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=mode, kl_coef=0.1,
                            kl_estimator="low_var_kl", entropy_coef=0.01, tis_cap=2.0 if tis else None)


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_gradient_is_invariant_to_micro_batching_and_layout(model64, minibatch, mode):
    config = _config(mode, tis=mode == "token-mean")
    everything = [list(range(8))]
    lengths = [len(p) + len(r) for p, r in zip(minibatch["prompts"], minibatch["responses"], strict=True)]
    budget_plan = plan_micro_batches(lengths, max_tokens=30)
    assert len(budget_plan) >= 3
    singles = [[i] for i in reversed(range(8))]

    reference, ref_metrics = accumulate_gradient(model64, minibatch, everything, "padded", config)
    assert reference.norm() > 0 and ref_metrics["actor/clipfrac"] > 0  # the clip branch is exercised
    for plan, layout in ((everything, "packed"), (budget_plan, "packed"), (budget_plan, "padded"),
                         (singles, "packed")):
        grad, metrics = accumulate_gradient(model64, minibatch, plan, layout, config)
        assert _relative_error(grad, reference) <= REL_TOL, (plan, layout)
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_data_parallel_shards_with_global_normalizer_sum_to_the_full_gradient(model64, minibatch):
    """Two simulated ranks, each with its own half; FSDP would average, so each loss carries dp_size=2."""
    config = _config("seq-mean-token-mean")
    reference, _ = accumulate_gradient(model64, minibatch, [list(range(8))], "packed", config)
    total = torch.zeros_like(reference)
    full_norm = LossNormalizer.from_response_mask(
        [_train_mask(minibatch, range(8), pad_sequences(minibatch["prompts"], minibatch["responses"]))],
        MAX_RESPONSE)
    rank_norm = LossNormalizer(full_norm.num_tokens, full_norm.num_sequences, MAX_RESPONSE, dp_size=2)
    for shard in ([0, 2, 4, 6], [1, 3, 5, 7]):
        model64.zero_grad(set_to_none=True)
        batch = pack_sequences([minibatch["prompts"][i] for i in shard], [minibatch["responses"][i] for i in shard])
        logp, entropy = token_logprobs(model64, batch, TEMPERATURE, compute_entropy=True)
        loss, _ = compute_policy_loss(
            logp, pad_responses([minibatch["old"][i] for i in shard]), minibatch["advantages"][shard],
            _train_mask(minibatch, shard, batch), rank_norm, config,
            ref_logprobs=pad_responses([minibatch["ref"][i] for i in shard]), entropy=entropy)
        loss.backward()
        total += torch.cat([p.grad.flatten() for p in model64.parameters()])
    assert _relative_error(total / 2, reference) <= REL_TOL  # the all-reduce average of the two ranks


def test_per_micro_batch_mean_is_not_invariant(model64, minibatch):
    """verl 0.1 behaviour (token mean inside each micro-batch, summed): the gradient changes with the split."""
    config = _config("token-mean")
    reference, _ = accumulate_gradient(model64, minibatch, [list(range(8))], "packed", config)
    lengths = [len(p) + len(r) for p, r in zip(minibatch["prompts"], minibatch["responses"], strict=True)]
    buggy, _ = accumulate_gradient(model64, minibatch, plan_micro_batches(lengths, 30), "packed", config,
                                   per_micro_normalizer=True)
    assert _relative_error(buggy, reference) > 0.1
