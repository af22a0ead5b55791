"""The vLLM engine on the tiny model: determinism, n samples, logprobs vs transformers, in-place sync."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from deepscaler.rollout import SamplingSettings  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")


def _prompts(engine) -> list[list[int]]:
    texts = ["What is 12+30?", "Compute 7*8."]
    tok = engine.tokenizer
    return [tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                        add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for t in texts]


def test_greedy_is_deterministic(engine):
    prompts = _prompts(engine)
    greedy = SamplingSettings(n=1, temperature=0.0, max_tokens=12)
    first = engine.generate(prompts, greedy)
    second = engine.generate(prompts, greedy)
    assert [g[0].token_ids for g in first] == [g[0].token_ids for g in second]
    assert all(len(g[0].token_ids) > 0 for g in first)


def test_n_samples_and_seeded_sampling(engine):
    prompts = _prompts(engine)
    sampling = SamplingSettings(n=4, temperature=1.0, max_tokens=10, seed=123)
    groups = engine.generate(prompts, sampling)
    assert len(groups) == 2 and all(len(g) == 4 for g in groups)
    # A random model at T=1 gives different samples within a group…
    assert len({tuple(c.token_ids) for c in groups[0]}) > 1
    # …and the same seed reproduces them exactly.
    again = engine.generate(prompts, sampling)
    assert [[c.token_ids for c in g] for g in groups] == [[c.token_ids for c in g] for g in again]
    for completion in groups[0]:
        assert completion.finish_reason in ("stop", "length")
        assert len(completion.logprobs) == len(completion.token_ids)
        assert completion.prompt_token_ids == prompts[0]


def _hf_token_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].double() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt)
    return [logp[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1])]


def test_sampled_logprobs_agree_with_transformers(engine, hf_model):
    prompts = _prompts(engine)
    temperature = 0.7
    groups = engine.generate(prompts, SamplingSettings(n=2, temperature=temperature, max_tokens=12, seed=5))
    for group, prompt in zip(groups, prompts, strict=True):
        for completion in group:
            expected = _hf_token_logprobs(hf_model, prompt, completion.token_ids, temperature)
            assert completion.logprobs == pytest.approx(expected, abs=1e-4)


def test_update_weights_in_place_changes_scores(engine, hf_model, tiny_model_dir):
    prompt = _prompts(engine)[0]
    response = [30, 31, 32, 33]
    before = engine.score([prompt + response], [len(prompt)])[0]
    assert before == pytest.approx(_hf_token_logprobs(hf_model, prompt, response, 1.0), abs=1e-4)

    from transformers import AutoModelForCausalLM

    changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for param in changed.parameters():
            param.mul_(1.3)
    engine.update_weights(changed.state_dict().items())
    after = engine.score([prompt + response], [len(prompt)])[0]
    assert after == pytest.approx(_hf_token_logprobs(changed, prompt, response, 1.0), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(after, before, strict=True)) > 1e-3
    # Restore so other tests in this module see the original weights.
    engine.update_weights(hf_model.state_dict().items())
    assert engine.score([prompt + response], [len(prompt)])[0] == pytest.approx(before, abs=1e-5)


def test_chunked_prefill_choice_each_branch():
    from deepscaler.rollout.engine_setup import chunked_prefill_choice

    assert chunked_prefill_choice(None, "cpu")[0] is False
    assert chunked_prefill_choice(None, "cuda")[0] is None
    assert chunked_prefill_choice(True, "cpu") == (True, "set in the engine config (enable_chunked_prefill)")


def test_many_long_seeded_prompts_do_not_crash(engine):
    # More prompt tokens than one scheduler step holds: with chunked prefill on, vLLM's CPU worker crashed here.
    prompts = [list(range(10, 10 + 200 + i % 37)) for i in range(60)]
    groups = engine.generate(prompts, SamplingSettings(n=2, temperature=1.0, max_tokens=4, seed=3))
    assert len(groups) == 60 and all(len(g) == 2 for g in groups)


def test_seeded_prompts_draw_independent_samples(engine):
    # The same prompt twice in one seeded call must not get identical samples (one seed per prompt).
    prompt = _prompts(engine)[0]
    groups = engine.generate([prompt, prompt], SamplingSettings(n=3, temperature=1.0, max_tokens=10, seed=7))
    assert [c.token_ids for c in groups[0]] != [c.token_ids for c in groups[1]]


def test_texts_match_vllm_detokenizer(engine):
    """generate() skips vLLM's per-token detokenization and decodes once at the end: same texts, stop token
    excluded, whether a response ended on EOS, on a stop id or at max_tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = _prompts(engine)
    tok = engine.tokenizer
    # frequent byte tokens as stop ids, so that many responses end on one before max_tokens
    stop_ids = [tok.convert_tokens_to_ids(t) for t in ("a", "e", "Ġ", "1")]
    sampling = SamplingSettings(n=16, temperature=1.5, max_tokens=24, seed=7, stop_token_ids=stop_ids)
    ours = engine.generate(prompts, sampling)
    params = [SamplingParams(n=16, temperature=1.5, max_tokens=24, seed=7 + i * 16, stop_token_ids=stop_ids)
              for i in range(len(prompts))]
    reference = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    finishes = set()
    for group, request in zip(ours, reference, strict=True):
        for completion, sample in zip(group, request.outputs, strict=True):
            assert completion.token_ids == list(sample.token_ids)
            assert completion.text == sample.text
            finishes.add((completion.finish_reason, bool(completion.token_ids) and completion.token_ids[-1] in stop_ids))
    assert ("stop", True) in finishes and ("length", False) in finishes


def test_prompt_seeds_make_samples_independent_of_position_and_call_seed(engine):
    """prompt_seeds[i] seeds prompt i whatever its position and whatever ``seed`` says; the old positional
    scheme (seed + i * n) gives the second prompt of a call other samples than the same prompt alone."""
    first, second = _prompts(engine)
    settings = dict(n=2, temperature=1.0, max_tokens=8)
    pair = engine.generate([first, second], SamplingSettings(**settings, seed=123, prompt_seeds=[11, 29]))
    alone = engine.generate([second], SamplingSettings(**settings, seed=999, prompt_seeds=[29]))
    assert [c.token_ids for c in pair[1]] == [c.token_ids for c in alone[0]]
    positional_pair = engine.generate([first, second], SamplingSettings(**settings, seed=5))
    positional_alone = engine.generate([second], SamplingSettings(**settings, seed=5))
    assert [c.token_ids for c in positional_pair[1]] != [c.token_ids for c in positional_alone[0]]


def test_prompt_seeds_length_must_match_prompts(engine):
    with pytest.raises(ValueError, match=r"prompt_seeds has 1 seeds for 2 prompts.*one seed per prompt"):
        engine.generate(_prompts(engine), SamplingSettings(n=1, max_tokens=4, prompt_seeds=[1]))


def test_a_tied_checkpoint_without_lm_head_updates_the_output_layer(engine, hf_model, tiny_model_dir):
    """A tied model's checkpoint file names only the input embeddings; loading it must move vLLM's output layer
    too (vLLM's layerwise reload would otherwise keep the old head, 1.15 nats/token off here)."""
    from transformers import AutoModelForCausalLM

    assert hf_model.config.tie_word_embeddings
    prompt, response = _prompts(engine)[0], [30, 31, 32, 33]
    changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for param in changed.parameters():
            param.mul_(1.3)
    as_saved = {k: v for k, v in changed.state_dict().items() if k != "lm_head.weight"}  # what save_file keeps
    engine.update_weights(as_saved.items())
    after = engine.score([prompt + response], [len(prompt)])[0]
    assert after == pytest.approx(_hf_token_logprobs(changed, prompt, response, 1.0), abs=1e-4)
    engine.update_weights(hf_model.state_dict().items())
