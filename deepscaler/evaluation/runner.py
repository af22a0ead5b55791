"""``evaluate(EvalConfig)``: sample n responses per problem, score them, report Pass@k, save everything.

DeepScaleR's protocol is the default (16 samples, T 0.6, top-p 0.95, 32 768 response tokens, prompts up to
1 536 tokens). Generation runs in chunks of problems; each problem is appended to
``<output-dir>/<dataset>/responses.jsonl`` as soon as it is scored, so a rerun skips finished work. Each
problem samples with its own seed, derived from the eval seed and the problem's id, so its responses do not
depend on which chunk (or which resumed run) it lands in.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from deepscaler import rollout
from deepscaler.data import encode_prompts, load_problems, resolve_think_prefill
from deepscaler.data.loading import announce
from deepscaler.evaluation.config import EvalConfig
from deepscaler.evaluation.report import (
    AVERAGE,
    average_row,
    dataset_metrics,
    rich_table,
    write_results,
)
from deepscaler.evaluation.responses import ResponseStore, write_text_atomic
from deepscaler.rewards import score_responses

# Settings that change the samples: a resumed run must use the same ones.
_SAMPLE_SETTINGS = ("model", "n", "temperature", "top_p", "top_k", "max_tokens", "seed", "max_prompt_length",
                    "think_prefill")


def dataset_label(spec: str) -> str:
    """Folder/row name for a dataset spec: the name, a file's stem, or a Hub id with '/' → '__'."""
    path = Path(spec)
    if path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        return path.stem
    return spec.rstrip("/").replace("/", "__") if not path.is_dir() else path.name


def resolve_max_model_len(config: EvalConfig) -> tuple[int, str]:
    """Engine context length and why: prompt + response, capped at the model's position limit."""
    if config.max_model_len is not None:
        return config.max_model_len, "given by --max-model-len"
    wanted = config.max_prompt_length + config.max_tokens
    limit = None
    try:
        limit = getattr(AutoConfig.from_pretrained(config.model), "max_position_embeddings", None)
    except Exception as err:  # noqa: BLE001 - without a config we cannot cap; vLLM will check
        return wanted, f"max_prompt_length + max_tokens (model config unreadable: {err})"
    if limit is not None and wanted > limit:
        return limit, (f"max_prompt_length {config.max_prompt_length} + max_tokens {config.max_tokens} = {wanted} "
                       f"exceeds the model's max_position_embeddings {limit}: capped to {limit}, so responses "
                       "stop when prompt + response reach it")
    return wanted, f"max_prompt_length {config.max_prompt_length} + max_tokens {config.max_tokens}"


def resolve_eval_memory(config: EvalConfig, max_model_len: int) -> Any:
    """The engine's deepscaler.rollout.EngineMemory: 0.9 of a CUDA GPU (DeepScaleR's eval script), on CPU an
    explicit KV cache sized from the model; --gpu-memory-utilization / --kv-cache-memory-bytes override."""
    return rollout.resolve_engine_memory(rollout.engine_device_type(), "eval", config.gpu_memory_utilization,
                                 config.kv_cache_memory_bytes, config.model, max_model_len,
                                 rollout_dtype=config.dtype)


def problem_seed(eval_seed: int, problem_id: str, n: int) -> int:
    """The sampling seed of one problem: a stable hash of ``(eval_seed, problem_id)``.

    blake2b, not ``hash()`` (salted per process), so every process and machine agrees. vLLM seeds sample k of
    a request with ``seed + k``; the range keeps ``seed + n - 1`` below 2**31 - 1 (a non-negative int32).
    """
    digest = hashlib.blake2b(repr((eval_seed, problem_id)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - n)


SEEDING = "per-problem-id"
"""How sampling seeds are chosen (recorded in settings.json; folders written before it was recorded used the
prompt's position within a chunk, and their samples must not be mixed with new ones)."""


def _settings(config: EvalConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings["reward"] = repr(config.reward)
    settings["seeding"] = SEEDING
    return settings


def _check_settings(output_dir: Path, config: EvalConfig) -> None:
    """Refuse to mix samples drawn with different settings in one output folder."""
    path = output_dir / "settings.json"
    if not (config.resume and path.is_file()):
        return
    before = json.loads(path.read_text())
    now = _settings(config)
    before.setdefault("seeding", "position in chunk")
    changed = [k for k in (*_SAMPLE_SETTINGS, "seeding") if k in before and before[k] != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {before[k]!r} → {now[k]!r}" for k in changed)
        raise ValueError(f"{output_dir} holds responses sampled with other settings ({diffs}). Fix: use another "
                         "--output-dir, or --no-resume to discard them")


class _LazyEngine:
    """Starts the rollout engine on first use, so a fully resumed run starts nothing."""

    def __init__(self, config: EvalConfig, engine: Any = None) -> None:
        self.config, self.engine, self.owned = config, engine, False
        self.max_model_len: int | None = getattr(getattr(engine, "config", None), "max_model_len", None)
        if engine is None:
            self.max_model_len, reason = resolve_max_model_len(config)
            announce(f"[deepscaler.eval] max_model_len {self.max_model_len} ({reason})")

    def get(self) -> Any:
        if self.engine is None:
            memory = resolve_eval_memory(self.config, self.max_model_len)
            announce(f"[deepscaler.eval] vLLM memory: {memory.describe()}")
            self.engine = rollout.RolloutEngine(rollout.EngineConfig(
                model=self.config.model, dtype=self.config.dtype, precision=self.config.precision,
                attention_backend=self.config.attention_backend, max_model_len=self.max_model_len,
                gpu_memory_utilization=memory.gpu_memory_utilization, seed=self.config.seed,
                tensor_parallel_size=self.config.tensor_parallel_size, extra_engine_kwargs=memory.engine_kwargs()))
            self.owned = True
        return self.engine

    def close(self) -> None:
        if self.owned and self.engine is not None:
            self.engine.close()
            self.engine = None


def _load_tokenizer(config: EvalConfig, engine: Any) -> Any:
    if engine is not None:
        return engine.tokenizer
    return AutoTokenizer.from_pretrained(config.model)


def evaluate(config: EvalConfig, engine: Any = None) -> dict[str, dict[str, Any]]:
    """Evaluate ``config.model`` on ``config.datasets``; returns dataset → metrics plus "average".

    Metrics per dataset: pass@k (fractions) for k in powers of two ≤ n and n, ``n``, ``problems``,
    ``dropped`` (prompts over the length limit), ``mean_response_tokens``, ``truncated_fraction``.
    ``engine``: an existing ``RolloutEngine`` (e.g. the trainer's, with current weights); it is not closed.
    Without one, an engine is started only if some problem still needs generating.
    """
    out = Path(config.output_dir) if config.output_dir else None
    if out is not None:
        _check_settings(out, config)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "settings.json", json.dumps(_settings(config), indent=2, default=str) + "\n")
    tokenizer = _load_tokenizer(config, engine)
    prompt_opens_think, _ = resolve_think_prefill(tokenizer, config.think_prefill)
    engines = _LazyEngine(config, engine)
    prompt_limit = config.max_prompt_length
    if engines.max_model_len is not None:
        prompt_limit = min(prompt_limit, engines.max_model_len - 1)  # vLLM needs room for one new token
    sampling = rollout.SamplingSettings(n=config.n, temperature=config.temperature, top_p=config.top_p,
                                        top_k=config.top_k, max_tokens=config.max_tokens, seed=config.seed,
                                        logprobs=False)
    correct_reward = config.reward.correct_reward
    # every data set is found and read before the first one is generated: a missing one stops the run at once
    problem_sets = {dataset_label(spec): load_problems(spec, data_dir=config.data_dir, split=config.split,
                                                       problem_key=config.problem_key, answer_key=config.answer_key,
                                                       limit=config.max_problems,
                                                       on_malformed="skip" if config.skip_malformed else "error")
                    for spec in config.datasets}
    results: dict[str, dict[str, Any]] = {}
    try:
        for label, problems in problem_sets.items():
            encoded = encode_prompts(problems, tokenizer, prompt_limit, label=label)
            store = ResponseStore(out / label / "responses.jsonl") if out is not None else None
            finished = _load_finished(store, config, label)
            todo = [(p, ids) for p, ids in zip(encoded.problems, encoded.prompt_token_ids, strict=True)
                    if p.id not in finished]
            if len(todo) < len(encoded.problems):
                print(f"[deepscaler.eval] {label}: {len(encoded.problems) - len(todo)} of {len(encoded.problems)} "
                      "problems already done (resumed from responses.jsonl)", flush=True)
            try:
                _generate_and_score(todo, engines, sampling, config, prompt_opens_think, store, finished, label)
            finally:
                if store is not None:
                    store.close()
            records = [finished[p.id] for p in encoded.problems]
            metrics = dataset_metrics(
                [[s >= correct_reward - 1e-9 for s in r["scores"]] for r in records],
                [r["response_tokens"] for r in records], [r["finish_reasons"] for r in records])
            metrics["dropped"] = len(encoded.dropped)
            results[label] = metrics
    finally:
        engines.close()
    results[AVERAGE] = average_row(results)
    if out is not None:
        write_results(out, results)
    if config.print_table:
        _print_table(results, config)
    return results


def _load_finished(store: ResponseStore | None, config: EvalConfig, label: str) -> dict[str, dict[str, Any]]:
    if store is None:
        return {}
    if not config.resume:
        store.reset()
        return {}
    finished = store.load()
    wrong_n = [pid for pid, r in finished.items() if len(r.get("scores", [])) != config.n]
    if wrong_n:
        raise ValueError(f"{store.path}: {len(wrong_n)} records have a different number of samples than n={config.n} "
                         f"(e.g. {wrong_n[0]}). Fix: use another --output-dir, or --no-resume to discard them")
    return finished


def _generate_and_score(todo: list, engines: _LazyEngine, sampling: Any, config: EvalConfig,
                        prompt_opens_think: bool, store: ResponseStore | None, finished: dict, label: str) -> None:
    """Generate ``todo`` in chunks; score and save each problem as soon as its chunk is done."""
    if not todo:
        return
    engine = engines.get()  # started before the bar so its log lines do not interleave with it
    generated_tokens, generate_seconds = 0, 0.0
    with tqdm(total=len(todo), desc=label, unit="problem", disable=not config.progress) as bar:
        for start in range(0, len(todo), config.chunk_size):
            chunk = todo[start:start + config.chunk_size]
            began = time.perf_counter()
            # Seeds per problem, not per position in the chunk: a problem's samples are the same whatever else
            # is generated with it (chunking, problems already finished by an earlier run).
            seeds = [problem_seed(config.seed, problem.id, config.n) for problem, _ in chunk]
            groups = engine.generate([ids for _, ids in chunk], replace(sampling, prompt_seeds=seeds))
            generate_seconds += time.perf_counter() - began
            texts = [c.text for group in groups for c in group]
            golds = [problem.answers for problem, _ in chunk for _ in range(config.n)]
            scores = score_responses(texts, golds, config.reward, prompt_opens_think=prompt_opens_think)
            for index, ((problem, prompt_ids), group) in enumerate(zip(chunk, groups, strict=True)):
                record = {
                    "id": problem.id,
                    "problem": problem.problem,
                    "gold": problem.answers,
                    "responses": [c.text for c in group],
                    "scores": [float(s) for s in scores[index * config.n:(index + 1) * config.n]],
                    "finish_reasons": [c.finish_reason for c in group],
                    "prompt_tokens": len(prompt_ids),
                    "response_tokens": [len(c.token_ids) for c in group],
                }
                finished[problem.id] = record
                if store is not None:
                    store.append(record)
                generated_tokens += sum(record["response_tokens"])
            if store is not None:
                store.sync()
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{generated_tokens / max(generate_seconds, 1e-9):.0f}")


def _print_table(results: dict[str, dict[str, Any]], config: EvalConfig) -> None:
    Console().print(rich_table(results, title=f"{config.model} — Pass@k (%)"))
