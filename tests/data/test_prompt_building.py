"""Prompt text and tokens exactly as DeepScaleR builds them; think-prefill detection; the length filter."""

from __future__ import annotations

import pytest

from deepscaler.data import (
    INSTRUCTION,
    Problem,
    build_prompt,
    detect_think_prefill,
    encode_prompts,
    render_prompt,
    resolve_think_prefill,
)
from deepscaler.models.tiny import build_tiny_tokenizer


def _problem(text: str, index: int = 0) -> Problem:
    return Problem(id=f"t-{index}", problem=text, answers=["1"], source="t")


def test_prompt_text_is_exact():
    assert INSTRUCTION == "Let's think step by step and output the final answer within \\boxed{}."
    assert build_prompt("What is $1+1$?") == (
        "What is $1+1$? Let's think step by step and output the final answer within \\boxed{}.")


@pytest.mark.parametrize("prefill", [False, True])
def test_chat_template_rendering_and_tokens(prefill):
    tokenizer = build_tiny_tokenizer(think_prefill=prefill)
    expected = "<|bos|><|user|>" + build_prompt("Add 2 and 3.") + "<|assistant|>" + ("<think>\n" if prefill else "")
    assert render_prompt("Add 2 and 3.", tokenizer) == expected
    encoded = encode_prompts([_problem("Add 2 and 3.")], tokenizer, max_prompt_length=None)
    ids = encoded.prompt_token_ids[0]
    # The template emits BOS; tokenising must not add a second one.
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == expected
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("\\boxed") in ids  # the instruction's \boxed is one token


def test_think_prefill_detection_both_ways():
    opens, reason = detect_think_prefill(build_tiny_tokenizer(think_prefill=True))
    assert opens is True and "opens <think>" in reason
    opens, reason = detect_think_prefill(build_tiny_tokenizer(think_prefill=False))
    assert opens is False and "does not open <think>" in reason


def test_closed_think_block_and_missing_template():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = tokenizer.chat_template.replace("<|assistant|>{% endif %}",
                                                              "<|assistant|><think>\n\n</think>\n\n{% endif %}")
    assert render_prompt("Q", tokenizer).endswith("</think>\n\n")
    opens, reason = detect_think_prefill(tokenizer)
    assert opens is False and "closes" in reason
    plain = build_tiny_tokenizer()
    plain.chat_template = None
    opens, reason = detect_think_prefill(plain)
    assert opens is False and "no chat template" in reason
    assert render_prompt("Q", plain) == build_prompt("Q")


def test_override_and_single_announcement(capsys):
    prefill = build_tiny_tokenizer(think_prefill=True)
    assert resolve_think_prefill(prefill, "no") == (False, "forced by --think-prefill no")
    assert resolve_think_prefill(build_tiny_tokenizer(), "yes") == (True, "forced by --think-prefill yes")
    opens, reason = resolve_think_prefill(prefill, "auto")
    assert opens is True and reason.startswith("auto: ")
    resolve_think_prefill(prefill, "auto")
    out = capsys.readouterr().out
    assert out.count("think prefill") == 3  # yes, no, auto once (the repeat is not printed again)
    with pytest.raises(ValueError, match="--think-prefill"):
        resolve_think_prefill(prefill, "maybe")


def test_long_prompts_are_dropped_with_a_printed_count(capsys):
    tokenizer = build_tiny_tokenizer()
    problems = [_problem("x" * length, i) for i, length in enumerate([5, 400, 10, 300, 20])]
    lengths = [len(tokenizer(render_prompt(p.problem, tokenizer), add_special_tokens=False)["input_ids"])
               for p in problems]
    limit = sorted(lengths)[2]  # keeps the three shortest
    encoded = encode_prompts(problems, tokenizer, max_prompt_length=limit, label="toy")
    assert [p.id for p in encoded.problems] == ["t-0", "t-2", "t-4"]
    assert [p.id for p in encoded.dropped] == ["t-1", "t-3"]
    assert encoded.dropped_lengths == [lengths[1], lengths[3]]
    assert all(len(ids) <= limit for ids in encoded.prompt_token_ids)
    out = capsys.readouterr().out
    assert f"toy: dropped 2 of 5 prompts longer than max_prompt_length={limit} tokens (longest {lengths[1]})" in out
    assert encode_prompts(problems, tokenizer, max_prompt_length=10_000).dropped == []
    assert "dropped" not in capsys.readouterr().out
