"""The tiny tokenizer's word merges: the prompt's words become single tokens, digits stay one token each, the text
round-trips, and the saved tokenizer reloads (as transformers and vLLM load it) with the same ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from deepscaler.data import build_prompt, render_prompt
from deepscaler.models.tiny import build_tiny_tokenizer


def test_prompt_words_become_single_tokens_and_digits_stay_split(tmp_path):
    problem = "What is 859 + 978?"
    plain, merged = build_tiny_tokenizer(), build_tiny_tokenizer(words=[build_prompt("What is 1 + 2?")])
    text = render_prompt(problem, merged)
    plain_ids = plain(text, add_special_tokens=False)["input_ids"]
    ids = merged(text, add_special_tokens=False)["input_ids"]
    tokens = merged.convert_ids_to_tokens(ids)
    assert len(plain_ids) == 86 and len(ids) == 33  # the instruction is 70 characters and 14 words
    for word in ["What", "\u0120is", "\u0120Let", "'s", "\u0120think", "\u0120step", "\u0120within"]:
        assert word in tokens
    assert [t for t in tokens if t.isdigit()] == list("859978")
    assert merged.decode(ids) == text
    # Text outside the given words still encodes, byte by byte where no merge applies.
    other = "x = 12; thinking about it"
    assert merged.decode(merged(other, add_special_tokens=False)["input_ids"]) == other

    merged.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "Qwen2Tokenizer"
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids


def test_without_words_the_tokenizer_is_unchanged():
    assert build_tiny_tokenizer(words=[]).get_vocab() == build_tiny_tokenizer().get_vocab()


def test_conflicting_merges_are_refused():
    """Merges under which some word no longer encodes as one token are an error, not a silent split: "thin"'s merge
    t+h ranks first, so " within" would end as " wi" + "thin"."""
    with pytest.raises(ValueError, match="merges conflict"):
        build_tiny_tokenizer(words=["thin within"])
