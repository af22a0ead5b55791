import math

import pytest
import torch

from deepscaler.algorithms import (
    LOSS_AGGREGATIONS,
    LossNormalizer,
    PolicyLossConfig,
    aggregate_loss,
    compute_policy_loss,
    get_loss_aggregation,
    ppo_clip_loss,
    sum_metrics,
    truncated_importance_weights,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, float("nan")]])  # masked entries must not leak


def test_ppo_clip_hand_values_with_clip_higher():
    # ratios e^{logp−old}: 1.5, 0.5, 1.25, 0.9 ; ε_low 0.2, ε_high 0.28
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.25, 0.9]))
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0])
    loss, clipped = ppo_clip_loss(logp, old, adv, 0.2, 0.28)
    # A>0, ρ=1.5: max(−1.5, −1.28) = −1.28 (clipped) ; A>0, ρ=0.5: max(−0.5, −0.8) = −0.5
    # A<0, ρ=1.25: max(2.5, 2.5) = 2.5 (1.25 within 1.28) ; A<0, ρ=0.9: max(1.8, 1.8) = 1.8
    assert loss.tolist() == pytest.approx([-1.28, -0.5, 2.5, 1.8])
    assert clipped.tolist() == [True, False, False, False]
    loss_sym, clipped_sym = ppo_clip_loss(logp, old, adv, 0.2, 0.2)
    assert loss_sym[2].item() == pytest.approx(2.5) and not clipped_sym[2]  # unclipped branch is larger
    # A<0, ρ=0.5 → clip to 0.8: max(1.0, 1.6) = 1.6 (clipped, zero gradient)
    loss_low, clipped_low = ppo_clip_loss(torch.log(torch.tensor([0.5])), torch.zeros(1), torch.tensor([-2.0]))
    assert loss_low.item() == pytest.approx(1.6) and clipped_low.item()


def test_ppo_dual_clip_caps_negative_advantages():
    loss, clipped = ppo_clip_loss(torch.log(torch.tensor([10.0])), torch.zeros(1), torch.tensor([-1.0]),
                                  dual_clip_c=3.0)
    assert loss.item() == pytest.approx(3.0) and clipped.item()
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(torch.zeros(1), torch.zeros(1), torch.ones(1), dual_clip_c=1.0)


def test_ppo_advantage_per_sequence_broadcasts():
    loss, _ = ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, -1.0]))
    assert loss.tolist() == [[-1.0] * 3, [1.0] * 3]


def test_normalizer_counts_tokens_and_nonempty_sequences():
    norm = LossNormalizer.from_response_mask([MASK, torch.zeros(1, 5)], token_sum_scale=10)
    assert (norm.num_tokens, norm.num_sequences, norm.token_sum_scale) == (4.0, 2.0, 10)


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 3 + 4) / 4),
    ("token-sum", 10.0),
    ("seq-mean-token-mean", (2.0 + 4.0) / 2),
    ("seq-mean-token-sum", (6.0 + 4.0) / 2),
    ("seq-mean-token-sum-norm", 10.0 / (2 * 5)),
])
def test_aggregation_hand_values(mode, expected):
    norm = LossNormalizer.from_response_mask(MASK, token_sum_scale=5)
    assert aggregate_loss(LOSS, MASK, mode, norm).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_micro_batch_shares_sum_to_the_whole(mode):
    torch.manual_seed(0)
    loss = torch.randn(6, 7, dtype=torch.float64)
    mask = (torch.rand(6, 7) < 0.7).double()
    mask[4] = 0.0  # a fully masked (e.g. overlong-filtered) sequence
    norm = LossNormalizer.from_response_mask(mask, token_sum_scale=7)
    whole = aggregate_loss(loss, mask, mode, norm)
    parts = [aggregate_loss(loss[idx][:, :width], mask[idx][:, :width], mode, norm)
             for idx, width in (([0, 3], 7), ([1], 7), ([2, 4, 5], 7))]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-12)


def test_aggregation_registry_and_missing_scale():
    assert get_loss_aggregation("token-mean") is LOSS_AGGREGATIONS["token-mean"]
    with pytest.raises(ValueError, match=r"loss_agg_mode.*'seq-mean-token-sum-norm'"):
        get_loss_aggregation("mean")
    with pytest.raises(ValueError, match="token_sum_scale"):
        aggregate_loss(LOSS, MASK, "seq-mean-token-sum-norm", LossNormalizer.from_response_mask(MASK))


def test_truncated_importance_weights():
    old = torch.log(torch.tensor([0.5, 0.5, 0.9]))
    rollout = torch.log(torch.tensor([0.25, 0.5, 0.1]))
    assert truncated_importance_weights(old, rollout, cap=2.0).tolist() == pytest.approx([2.0, 1.0, 2.0])
    assert truncated_importance_weights(old, rollout, cap=10.0)[2].item() == pytest.approx(9.0)
    with pytest.raises(ValueError, match="tis_cap"):
        truncated_importance_weights(old, rollout, cap=0.0)


def _inputs():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.25], [0.2, 0.9, 0.9]])).requires_grad_()
    old = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.9, 0.9]]))  # ratio 2 on token (0,0)
    ref = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.9, 0.9]]))
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], requires_grad=True)
    return logp, old, ref, entropy


def test_compute_policy_loss_hand_values():
    logp, old, ref, entropy = _inputs()
    adv = torch.tensor([1.0, -1.0])
    norm = LossNormalizer.from_response_mask(MASK)
    config = PolicyLossConfig(kl_coef=0.5, kl_estimator="k1", entropy_coef=0.1)
    loss, metrics = compute_policy_loss(logp, old, adv, MASK, norm, config, ref_logprobs=ref, entropy=entropy)
    # pg per token: seq0 (A=1): ratios 2 (→clip 1.2), 1, 1 → −1.2, −1, −1 ; seq1 (A=−1): ratio 1 → +1
    pg = (-1.2 - 1 - 1 + 1) / 4
    kl = (0.0 + math.log(2)) / 4  # k1 = logp − ref on the 4 live tokens
    ent = (1 + 2 + 3 + 4) / 4
    assert metrics["actor/pg_loss"] == pytest.approx(pg)
    assert metrics["actor/kl"] == pytest.approx(kl)
    assert metrics["actor/entropy"] == pytest.approx(ent)
    assert metrics["actor/clipfrac"] == pytest.approx(0.25)
    assert metrics["actor/approx_kl"] == pytest.approx(math.log(0.5) / 4)
    assert loss.item() == pytest.approx(pg + 0.5 * kl - 0.1 * ent)
    loss.backward()
    # entropy bonus gradient: −coef / N_tokens on live tokens, 0 on padding
    assert entropy.grad.flatten().tolist() == pytest.approx([-0.025] * 4 + [0.0, 0.0])


def test_negative_kl_coef_reproduces_the_maximising_sign():
    logp, old, ref, _ = _inputs()
    norm = LossNormalizer.from_response_mask(MASK)
    pos, _ = compute_policy_loss(logp, old, torch.zeros(2), MASK, norm, PolicyLossConfig(kl_coef=0.001),
                                 ref_logprobs=ref)
    neg, _ = compute_policy_loss(logp, old, torch.zeros(2), MASK, norm, PolicyLossConfig(kl_coef=-0.001),
                                 ref_logprobs=ref)
    assert pos.item() > 0 and neg.item() == pytest.approx(-pos.item())


def test_tis_weights_scale_the_pg_term_and_dp_size_scales_the_loss():
    logp, old, _, _ = _inputs()
    adv = torch.tensor([1.0, -1.0])
    norm = LossNormalizer.from_response_mask(MASK)
    plain, _ = compute_policy_loss(logp, old, adv, MASK, norm, PolicyLossConfig())
    rollout = old - math.log(2.0)  # trainer/rollout ratio 2 everywhere, capped at 1.5
    tis, metrics = compute_policy_loss(logp, old, adv, MASK, norm, PolicyLossConfig(tis_cap=1.5),
                                       rollout_logprobs=rollout)
    assert tis.item() == pytest.approx(1.5 * plain.item())
    assert metrics["actor/tis_weight"] == pytest.approx(1.5) and metrics["actor/tis_capped_frac"] == 1.0
    doubled, _ = compute_policy_loss(logp, old, adv, MASK, LossNormalizer(4, 2, dp_size=2), PolicyLossConfig())
    assert doubled.item() == pytest.approx(2 * plain.item())


def test_missing_inputs_and_bad_config_name_the_field():
    logp, old, _, _ = _inputs()
    norm = LossNormalizer.from_response_mask(MASK)
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_policy_loss(logp, old, torch.ones(2), MASK, norm, PolicyLossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        compute_policy_loss(logp, old, torch.ones(2), MASK, norm, PolicyLossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="rollout_logprobs"):
        compute_policy_loss(logp, old, torch.ones(2), MASK, norm, PolicyLossConfig(tis_cap=2.0))
    with pytest.raises(ValueError, match="loss_agg_mode"):
        PolicyLossConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="kl_estimator"):
        PolicyLossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="clip_ratio_low"):
        PolicyLossConfig(clip_ratio_low=1.0)


def test_metric_shares_sum_over_micro_batches():
    logp, old, ref, entropy = _inputs()
    adv = torch.tensor([1.0, -1.0])
    norm = LossNormalizer.from_response_mask(MASK)
    config = PolicyLossConfig(kl_coef=0.1, entropy_coef=0.01, loss_agg_mode="seq-mean-token-mean")
    _, whole = compute_policy_loss(logp, old, adv, MASK, norm, config, ref_logprobs=ref, entropy=entropy)
    parts = [compute_policy_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], MASK[i:i + 1], norm, config,
                                 ref_logprobs=ref[i:i + 1], entropy=entropy[i:i + 1])[1] for i in range(2)]
    summed = sum_metrics(parts)
    assert summed.keys() == whole.keys()
    for key, value in whole.items():
        assert summed[key] == pytest.approx(value), key
