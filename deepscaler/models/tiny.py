"""A tiny Qwen2 causal LM and a byte-level math tokenizer, built locally.

Tests and the CPU demo need a real model that both transformers and vLLM load from a folder, without any
download. The tokenizer writes any text: every byte is a token, the LaTeX and reasoning markers that matter to
the reward (``\\boxed``, ``\\frac``, ``<think>``, ``</think>`` …) are single tokens, so a model learns to emit
them in one step, and the words of given texts (the demo's prompt) can be single tokens too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT]
# Multi-character pieces matched before the character split (longest first is handled by tokenizers).
MATH_TOKENS = [
    "<think>", "</think>", "\\boxed", "\\frac", "\\dfrac", "\\sqrt", "\\pi", "\\cdot", "\\times",
    "\\left", "\\right", "\\text", "\\infty", "\\le", "\\ge", "\\ne", "\\pm",
]

# Plain template: BOS, user turn, assistant turn. `think_prefill=True` makes the generation prompt end in
# "<think>\n" as the DeepSeek-R1-Distill template does since 2025-02-09, so tests can exercise that case.
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{PREFILL}{% endif %}"
)


def build_tiny_tokenizer(think_prefill: bool = False, words: Sequence[str] = ()) -> Qwen2Tokenizer:
    """A byte-level Qwen2 tokenizer (one token per byte) plus single tokens for the math/LaTeX markers, and a chat
    template.

    It is a real ``Qwen2Tokenizer`` (not a generic fast tokenizer) because ``AutoTokenizer`` — in
    transformers and inside vLLM — rebuilds any tokenizer of a ``qwen2`` model as ``Qwen2Tokenizer``; a
    different pre-tokenizer would be silently replaced on reload.

    Args:
        think_prefill: the generation prompt ends in ``<think>\\n`` (DeepSeek-R1-Distill's template since
            2025-02-09).
        words: texts whose words (``What``, `` think``, ``'s`` … as Qwen2's pre-tokenizer cuts them, so a word
            after a space is merged with its space) become single tokens through BPE merges, as a trained
            vocabulary has them for frequent words. Without them an instruction costs one token per character;
            digits stay one token each, as in Qwen2.
    """
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(token, len(vocab))
    merges = _word_merges(words, vocab) if words else []
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(MATH_TOKENS)
    tokenizer.chat_template = _CHAT_TEMPLATE.replace("{PREFILL}", "<think>\n" if think_prefill else "")
    split = [tokenizer.backend_tokenizer.model.tokenize("".join(pair)) for pair in merges]
    if any(len(tokens) != 1 for tokens in split):  # one word's merges cut another word apart
        raise ValueError(f"build_tiny_tokenizer(words=...): merges conflict for {[t for t in split if len(t) != 1]}")
    return tokenizer


def _word_merges(words: Sequence[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges that join each alphabetic piece of ``words`` (as Qwen2's pre-tokenizer cuts them: " think" with its
    space, "What" at the start) left to right into one token; the prefixes join ``vocab`` on the way, since BPE
    needs every intermediate piece to be a token."""
    splitter = build_tiny_tokenizer().backend_tokenizer.pre_tokenizer
    merges: list[tuple[str, str]] = []
    for text in words:
        for piece, _ in splitter.pre_tokenize_str(text):
            if len(piece) < 2 or not piece.lstrip("\u0120'").isalpha():  # \u0120 ("Ġ"): the byte-level space
                continue
            for end in range(1, len(piece)):
                pair = (piece[:end], piece[end])
                if pair not in merges:
                    merges.append(pair)
                vocab.setdefault(piece[: end + 1], len(vocab))
    return merges


@dataclass
class TinyModelSpec:
    """Geometry of the tiny Qwen2 model. vLLM refuses head_dim 16, so head_dim stays >= 32."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0


def build_tiny_model(tokenizer: Qwen2Tokenizer, spec: TinyModelSpec | None = None,
                     seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2ForCausalLM in float32 sized for ``tokenizer``."""
    spec = spec or TinyModelSpec()
    fields = asdict(spec)
    rope_theta = fields.pop("rope_theta")
    config = Qwen2Config(
        vocab_size=_round_up(len(tokenizer), 8),
        rope_theta=rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **fields,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(path: str | Path, spec: TinyModelSpec | None = None, think_prefill: bool = False,
                    seed: int = 0) -> Path:
    """Build the tiny model and tokenizer and save both with ``save_pretrained`` into ``path``."""
    path = Path(path)
    tokenizer = build_tiny_tokenizer(think_prefill=think_prefill)
    model = build_tiny_model(tokenizer, spec, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple
