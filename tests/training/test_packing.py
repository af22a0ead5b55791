import pytest
import torch

from deepscaler.models.tiny import build_tiny_model, build_tiny_tokenizer
from deepscaler.training.micro_batches import plan_micro_batches, restore_order
from deepscaler.training.packing import (
    block_diagonal_causal_mask,
    pack_sequences,
    pad_responses,
    pad_sequences,
    resolve_packed_attention,
    token_logprobs,
    unpad_responses,
)

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

TEMPERATURE = 0.6


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


def _sequences(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 270, (n,), generator=gen).tolist() for n in (5, 9, 3, 7, 4)]
    responses = [torch.randint(1, 270, (n,), generator=gen).tolist() for n in (6, 2, 8, 0, 11)]
    return prompts, responses


# ------------------------------------------------------------------------------------------ micro-batch plan
def test_plan_respects_budget_is_balanced_and_covers_every_index():
    lengths = [9, 7, 6, 5, 5, 4, 3, 1]  # total 40
    plan = plan_micro_batches(lengths, max_tokens=14)
    loads = [sum(lengths[i] for i in mb) for mb in plan]
    assert len(plan) == 3 and max(loads) <= 14  # ceil(40 / 14) = 3 suffices
    assert max(loads) - min(loads) <= 1  # LPT: 14 / 13 / 13
    assert sorted(i for mb in plan for i in mb) == list(range(len(lengths)))
    assert all(mb == sorted(mb) for mb in plan)


def test_plan_adds_micro_batches_when_balanced_split_overflows():
    # by volume ceil(30 / 10) = 3 would do, but no two of 7, 7, 7, 9 fit together under 10: 4 micro-batches
    assert len(plan_micro_batches([7, 7, 7, 9], max_tokens=10)) == 4
    assert len(plan_micro_batches([1, 1, 1], max_tokens=100, min_num_micro_batches=2)) == 2
    assert plan_micro_batches([], max_tokens=10) == []


def test_plan_rejects_sequence_longer_than_budget_naming_the_field():
    with pytest.raises(ValueError, match=r"sequence 1 has 12 tokens.*max_tokens_per_micro_batch=10"):
        plan_micro_batches([3, 12], max_tokens=10)
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        plan_micro_batches([3], max_tokens=0)


def test_restore_order_inverts_the_plan():
    lengths = [5, 1, 4, 2, 3]
    plan = plan_micro_batches(lengths, max_tokens=6)
    per_micro = [[f"seq{i}" for i in mb] for mb in plan]
    assert restore_order(per_micro, plan) == [f"seq{i}" for i in range(5)]


def test_pad_and_unpad_responses_round_trip():
    padded = pad_responses([[1.0, 2.0], [3.0], []], pad_value=-1.0)
    assert padded.tolist() == [[1.0, 2.0], [3.0, -1.0], [-1.0, -1.0]]
    assert [t.tolist() for t in unpad_responses(padded, [2, 1, 0])] == [[1.0, 2.0], [3.0], []]


# --------------------------------------------------------------------------------------------------- layouts
def test_pack_layout_fields_hand_checked():
    batch = pack_sequences([[10, 11], [20]], [[12, 13], [21, 22, 23]])
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22, 23]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch.attention_mask is None
    assert batch.target_ids.tolist() == [[11, 12, 13, 0, 21, 22, 23, 0]]
    assert batch.token_response_mask.tolist() == [[0, 1, 1, 0, 1, 1, 1, 0]]
    assert batch.segment_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert batch.response_positions.tolist() == [[1, 2, 0], [4, 5, 6]]
    assert batch.response_targets.tolist() == [[12, 13, 0], [21, 22, 23]]
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.num_tokens == 8


def test_pad_layout_fields_hand_checked():
    batch = pad_sequences([[10, 11], [20]], [[12, 13], [21, 22, 23]], pad_token_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13], [20, 21, 22, 23]]
    batch = pad_sequences([[10, 11], [20]], [[12], [21, 22, 23]], pad_token_id=7)
    assert batch.input_ids.tolist() == [[10, 11, 12, 7], [20, 21, 22, 23]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.response_positions.tolist() == [[1, 0, 0], [4, 5, 6]]
    assert batch.response_targets.tolist() == [[12, 0, 0], [21, 22, 23]]
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pack_sequences([[]], [[1]])


def test_block_diagonal_mask():
    mask = block_diagonal_causal_mask(torch.tensor([[0, 0, 1, 1]]), "sdpa", torch.float32)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    additive = block_diagonal_causal_mask(torch.tensor([[0, 1]]), "eager", torch.float64)
    assert additive[0, 0, 1, 0].item() == torch.finfo(torch.float64).min and additive[0, 0, 1, 1].item() == 0


def test_resolve_packed_attention_branches(model64, monkeypatch):
    assert resolve_packed_attention(model64)[0] == "position_ids"
    assert resolve_packed_attention(model64, "explicit_mask")[0] == "explicit_mask"
    monkeypatch.setattr("deepscaler.training.packing._transformers_detects_packing", lambda: False)
    choice, reason = resolve_packed_attention(model64)
    assert choice == "explicit_mask" and "does not detect" in reason
    monkeypatch.setattr(model64.config, "_attn_implementation", "flash_attention_2")
    assert resolve_packed_attention(model64)[0] == "position_ids"
    with pytest.raises(ValueError, match="explicit_mask"):
        resolve_packed_attention(model64, "explicit_mask")
    with pytest.raises(ValueError, match="packed_attention"):
        resolve_packed_attention(model64, "magic")


# ------------------------------------------------------------------------------------------------- log-probs
def _reference_logprobs(model, prompt, response):
    """Plain full-vocabulary forward of one unpadded sequence (the ground truth)."""
    logits = model(torch.tensor([prompt + response])).logits[0] / TEMPERATURE
    logp = torch.log_softmax(logits.double(), -1)[len(prompt) - 1: -1]
    return logp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


FLOAT64_ATOL = 1e-12
"""Two float64 computations of the same log-prob (|logp| < 10) in different layouts differ by float64 rounding
(unit roundoff 1.1e-16, measured <= 2e-15); 1e-12 leaves ~500x headroom and still catches any float32 step."""
EAGER_ATOL = 16 * 2.0**-24
"""transformers' eager attention runs its softmax in float32 even for float64 inputs (the rest of model64 is
float64): scores are rounded to float32 (relative error u = 2^-24) and exp, sum and division add a few u more,
so each layout's log-probs carry O(u) error from the float64 value (measured 0.3 u = 1.7e-8). 16 u bounds each
layout's distance from the float64 result; two layouts then agree within 2 x 16 u."""


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("packed_attention", ["position_ids", "explicit_mask"])
def test_packed_equals_padded_equals_one_by_one_float64(model64, packed_attention, implementation, monkeypatch):
    prompts, responses = _sequences()
    with torch.no_grad():  # the float64 result: sdpa computes every step in float64 (see run_in_float64)
        exact, exact_entropy = token_logprobs(model64, pad_sequences(prompts, responses), TEMPERATURE,
                                              compute_entropy=True)
    monkeypatch.setattr(model64.config, "_attn_implementation", implementation)
    atol = FLOAT64_ATOL if implementation == "sdpa" else EAGER_ATOL
    with torch.no_grad():
        packed, packed_entropy = token_logprobs(model64, pack_sequences(prompts, responses), TEMPERATURE,
                                                compute_entropy=True, packed_attention=packed_attention)
        padded, padded_entropy = token_logprobs(model64, pad_sequences(prompts, responses), TEMPERATURE,
                                                compute_entropy=True)
        assert packed.dtype == torch.float64 and packed.shape == (5, 11)
        for logprobs, entropy in ((packed, packed_entropy), (padded, padded_entropy)):
            torch.testing.assert_close(logprobs, exact, rtol=0, atol=atol)
            torch.testing.assert_close(entropy, exact_entropy, rtol=0, atol=atol)
        torch.testing.assert_close(packed, padded, rtol=0, atol=2 * atol)
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            alone, _ = token_logprobs(model64, pack_sequences([prompt], [response]), TEMPERATURE)
            torch.testing.assert_close(packed[i, : len(response)], alone[0, : len(response)], rtol=0, atol=2 * atol)
            if response:
                torch.testing.assert_close(packed[i, : len(response)], _reference_logprobs(model64, prompt, response),
                                           rtol=0, atol=2 * atol)
            assert (packed[i, len(response):] == 0).all()


def test_model64_computes_in_float64_throughout(model64):
    """Negative control for the 1e-12 bound: the stock float64 model (RMSNorm and rotary cos/sin in float32)
    is ~1e-8 away from the float64 result, so a float32 step anywhere in the path fails FLOAT64_ATOL."""
    stock = build_tiny_model(build_tiny_tokenizer(), seed=0).double().eval()
    stock.config._attn_implementation = "sdpa"
    prompts, responses = _sequences()
    with torch.no_grad():
        exact, _ = token_logprobs(model64, pad_sequences(prompts, responses), TEMPERATURE)
        rounded, _ = token_logprobs(stock, pad_sequences(prompts, responses), TEMPERATURE)
    assert (exact - rounded).abs().max() > 1e3 * FLOAT64_ATOL


def test_packing_without_isolation_would_differ(model64):
    """Negative control: the same packed row with monotonic position ids (no sequence boundary) leaks
    attention across sequences, so the comparison above can fail."""
    prompts, responses = _sequences()
    batch = pack_sequences(prompts, responses)
    with torch.no_grad():
        isolated, _ = token_logprobs(model64, batch, TEMPERATURE)
        batch.position_ids = torch.arange(batch.input_ids.shape[1]).unsqueeze(0)
        leaked, _ = token_logprobs(model64, batch, TEMPERATURE)
    assert (isolated[1:] - leaked[1:]).abs().max() > 1e-3


def test_entropy_matches_full_distribution_and_chunked_gradient_matches(model64):
    prompts, responses = _sequences(seed=1)
    batch = pack_sequences(prompts, responses)
    with torch.no_grad():
        _, entropy = token_logprobs(model64, batch, TEMPERATURE, compute_entropy=True)
        logits = model64(batch.input_ids, position_ids=batch.position_ids).logits[0].double() / TEMPERATURE
        full = torch.distributions.Categorical(logits=logits).entropy()
    expected = full[batch.response_positions[0, : len(responses[0])]]
    torch.testing.assert_close(entropy[0, : len(responses[0])], expected, rtol=0, atol=1e-12)

    grads = []
    for chunk_size in (4096, 3):  # one chunk vs many checkpointed chunks
        model64.zero_grad()
        logp, ent = token_logprobs(model64, batch, TEMPERATURE, compute_entropy=True, chunk_size=chunk_size)
        (logp.sum() + ent.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model64.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-13)


def test_entropy_without_gradient_keeps_values_and_logprob_gradients(model64):
    """entropy_grad=False (entropy a metric only): the same entropies, no graph behind them, and the log-probs'
    gradients unchanged, with one chunk and with many checkpointed chunks."""
    prompts, responses = _sequences(seed=3)
    batch = pack_sequences(prompts, responses)
    results = {}
    for entropy_grad in (True, False):
        for chunk_size in (4096, 3):
            model64.zero_grad()
            logp, ent = token_logprobs(model64, batch, TEMPERATURE, compute_entropy=True, chunk_size=chunk_size,
                                       entropy_grad=entropy_grad)
            assert ent.requires_grad is entropy_grad
            logp.sum().backward()
            results[entropy_grad, chunk_size] = (ent.detach(), torch.cat([p.grad.flatten()
                                                                          for p in model64.parameters()]))
    for chunk_size in (4096, 3):
        (ent_a, grad_a), (ent_b, grad_b) = results[True, chunk_size], results[False, chunk_size]
        torch.testing.assert_close(ent_b, ent_a, rtol=0, atol=0)  # same arithmetic, only the graph differs
        torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=0)


def test_lm_head_stays_float32_under_bf16_autocast():
    model = build_tiny_model(build_tiny_tokenizer(), seed=0).eval()  # float32 weights, bf16 compute
    prompts, responses = _sequences(seed=2)
    batch = pack_sequences(prompts, responses)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, _ = token_logprobs(model, batch, TEMPERATURE)
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                             use_cache=False).last_hidden_state
    assert logprobs.dtype == torch.float32
    with torch.no_grad():  # reference: same bf16 hidden states, head and softmax in float32 outside autocast
        h = hidden.reshape(-1, hidden.shape[-1])[batch.response_positions[batch.response_mask.bool()]].float()
        logits = (h @ model.lm_head.weight.float().T) / TEMPERATURE
        expected = torch.log_softmax(logits, -1).gather(-1, batch.response_targets[batch.response_mask.bool()]
                                                        .unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs[batch.response_mask.bool()], expected, rtol=0, atol=1e-5)
