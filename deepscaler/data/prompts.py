"""DeepScaleR prompts: problem + one space + instruction, rendered with the tokenizer's chat template.

Also detects chat templates whose generation prompt already opens ``<think>`` (DeepSeek-R1-Distill since
2025-02-09): responses then never contain ``<think>``, and a reward that requires it scores every sample 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deepscaler.console.logs import say
from deepscaler.data.loading import announce
from deepscaler.data.problems import INSTRUCTION, Problem

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_PREFILL_MODES = ("auto", "yes", "no")
_PROBE = "deepscaler think-prefill probe 1+1"


def build_prompt(problem_text: str) -> str:
    """The user message DeepScaleR sends: the problem, one space, the boxed-answer instruction."""
    return f"{problem_text} {INSTRUCTION}"


def chat_messages(problem_text: str) -> list[dict[str, str]]:
    """The chat for one problem: a single user turn, no system prompt (as DeepScaleR)."""
    return [{"role": "user", "content": build_prompt(problem_text)}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(problem_text: str, tokenizer: Any) -> str:
    """The prompt string the model sees: chat template with generation prompt, or the plain user message."""
    if not has_chat_template(tokenizer):
        return build_prompt(problem_text)
    return tokenizer.apply_chat_template(chat_messages(problem_text), tokenize=False, add_generation_prompt=True)


def detect_think_prefill(tokenizer: Any) -> tuple[bool, str]:
    """Whether the chat template's generation prompt leaves a ``<think>`` block open, and why.

    Renders a probe message with the generation prompt and looks at what follows the message: an unclosed
    ``<think>`` there means every response starts inside the thinking block.
    """
    if not has_chat_template(tokenizer):
        return False, "tokenizer has no chat template: prompts are plain text, the model must open <think> itself"
    try:
        rendered = render_prompt(_PROBE, tokenizer)
    except Exception as err:  # noqa: BLE001 - any template failure means we cannot tell
        return False, f"chat template failed to render a probe ({type(err).__name__}: {err}); assuming no prefill"
    message = build_prompt(_PROBE)
    tail = rendered[rendered.rfind(message) + len(message):] if message in rendered else rendered
    opened = tail.rfind(THINK_OPEN)
    if opened < 0:
        return False, f"generation prompt {tail!r} does not open <think>: responses must contain <think>…</think>"
    if THINK_CLOSE in tail[opened:]:
        return False, (f"generation prompt {tail!r} opens and closes an empty think block (thinking disabled): "
                       "no <think> prefill")
    return True, (f"generation prompt {tail!r} opens <think> (as DeepSeek-R1-Distill's template does since "
                  "2025-02-09): responses start inside the thinking block, so the reward must not require "
                  "<think> in the response")


def resolve_think_prefill(tokenizer: Any, mode: str = "auto") -> tuple[bool, str]:
    """``detect_think_prefill`` unless forced by ``mode`` ("yes"/"no", the --think-prefill flag); printed once."""
    if mode not in THINK_PREFILL_MODES:
        raise ValueError(f"think_prefill={mode!r}: use one of {', '.join(THINK_PREFILL_MODES)} (--think-prefill)")
    if mode == "auto":
        opens, reason = detect_think_prefill(tokenizer)
        reason = f"auto: {reason}"
    else:
        opens = mode == "yes"
        reason = f"forced by --think-prefill {mode}"
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    announce(f"[deepscaler.data] think prefill for {name}: {'yes' if opens else 'no'} ({reason})")
    return opens, reason


@dataclass
class EncodedPrompts:
    """Tokenised prompts of the problems that fit the length limit, in input order."""

    problems: list[Problem]
    """Problems kept (prompt within the limit)."""
    prompt_token_ids: list[list[int]]
    """Prompt token ids, one list per kept problem (chat template applied, no extra special tokens)."""
    dropped: list[Problem] = field(default_factory=list)
    """Problems whose prompt was longer than the limit."""
    dropped_lengths: list[int] = field(default_factory=list)
    """Prompt lengths (tokens) of the dropped problems."""


def encode_prompts(problems: Sequence[Problem], tokenizer: Any, max_prompt_length: int | None = None,
                   label: str = "") -> EncodedPrompts:
    """Render and tokenise each problem's prompt; drop (with a printed count) prompts over the limit.

    With a chat template the rendered text is tokenised without adding special tokens (the template already
    emits BOS); without one, the tokenizer's defaults apply.
    """
    chat = has_chat_template(tokenizer)
    texts = [render_prompt(p.problem, tokenizer) for p in problems]
    if not texts:
        return EncodedPrompts([], [])
    token_ids = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    if not chat:
        announce(f"[deepscaler.data] {getattr(tokenizer, 'name_or_path', 'tokenizer')} has no chat template: "
                 "prompts are the plain problem + instruction text")
    result = EncodedPrompts([], [])
    for problem, ids in zip(problems, token_ids, strict=True):
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            result.dropped.append(problem)
            result.dropped_lengths.append(len(ids))
        else:
            result.problems.append(problem)
            result.prompt_token_ids.append(list(ids))
    if result.dropped:
        where = f"{label}: " if label else ""
        say(f"{where}dropped {len(result.dropped)} of {len(problems)} prompts longer than "
            f"max_prompt_length={max_prompt_length} tokens (longest {max(result.dropped_lengths)}); "
            "raise --max-prompt-length to keep them", prefix="deepscaler.data")
    return result
