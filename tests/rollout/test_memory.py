"""deepscaler.rollout.memory: each rule of the engine's memory decision, with its numbers, and a real vLLM CPU engine
started with the computed KV-cache size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deepscaler.rollout.memory import (
    CPU_KV_FLOOR_BYTES,
    EngineMemory,
    MiB,
    cpu_kv_cache_bytes,
    kv_bytes_per_token,
    resolve_engine_memory,
)

GiB = 1 << 30
# 4 layers, 8 query heads, 2 KV heads, no head_dim: head_dim = 512 / 8 = 64.
FAKE = SimpleNamespace(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=512)


def test_bytes_per_token_from_the_config():
    assert kv_bytes_per_token(FAKE, "float32")[0] == 2 * 4 * 2 * 64 * 4
    assert kv_bytes_per_token(FAKE, "bfloat16")[0] == 2 * 4 * 2 * 64 * 2
    assert kv_bytes_per_token(FAKE, "auto")[0] == 2 * 4 * 2 * 64 * 4  # auto counts the widest dtype
    # An explicit head_dim wins over hidden_size / heads; no num_key_value_heads means plain multi-head attention.
    explicit = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, head_dim=32)
    assert kv_bytes_per_token(explicit, "float16") == (2 * 2 * 4 * 32 * 2, "2 x 2 layers x 4 KV heads x 32 "
                                                       "head_dim x 2 B")
    from transformers import Qwen2Config

    qwen = Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)
    assert kv_bytes_per_token(qwen, "bfloat16")[0] == 28672  # DeepSeek-R1-Distill-Qwen-1.5B: 28 KiB per token
    with pytest.raises(ValueError, match="rollout dtype 'int3'"):
        kv_bytes_per_token(FAKE, "int3")


def test_explicit_fraction_wins_on_gpu_and_names_its_field():
    memory = resolve_engine_memory("cuda", "train", 0.3, None, None, 1024)
    assert (memory.gpu_memory_utilization, memory.kv_cache_memory_bytes) == (0.3, None)
    assert memory.reason.startswith("rollout.gpu_memory_utilization=0.3") and memory.engine_kwargs() == {}
    assert "--gpu-memory-utilization=0.5" in resolve_engine_memory("cuda", "eval", 0.5, None, None, 1024).reason


def test_a_fraction_never_sizes_a_cpu_kv_cache():
    """On CPU vLLM would size the cache as fraction x RAM - this process's memory (negative once a trainer holds
    more): the fraction is passed on, the KV cache is still computed from the model."""
    memory = resolve_engine_memory("cpu", "train", 0.3, None, FAKE, 1000, 32, "float32", ram_bytes=16 * GiB)
    assert memory.gpu_memory_utilization == 0.3
    assert memory.kv_cache_memory_bytes == (32 * 1024 + 256) * 4096
    assert memory.reason.startswith("rollout.gpu_memory_utilization=0.3 is passed on but does not size the KV "
                                    "cache on CPU")


def test_explicit_kv_bytes_win_on_every_device():
    cpu = resolve_engine_memory("cpu", "train", None, 512 * MiB, None, 1024)
    assert cpu == EngineMemory(0.1, 512 * MiB, cpu.reason)
    assert cpu.engine_kwargs() == {"kv_cache_memory_bytes": 512 * MiB}
    assert "rollout.kv_cache_memory_bytes=536870912 (512 MiB)" in cpu.reason
    from transformers import Qwen2Config

    # on a GPU vLLM still reserves fraction x total at start-up: the fraction is derived from the explicit size
    # (what the engine needs besides its KV cache comes from deepscaler.rollout.memory_plan.engine_fixed_memory)
    from deepscaler.rollout.memory_plan import ModelGeometry, PlanInputs, engine_fixed_memory

    qwen = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2)
    fixed = sum(engine_fixed_memory(PlanInputs(ModelGeometry.from_config(qwen), 80 * GiB, 1024, 1024,
                                               rollout_dtype="bfloat16")).values())
    gpu = resolve_engine_memory("cuda", "eval", None, 2 * GiB, qwen, 1024, rollout_dtype="bfloat16",
                                gpu_total_bytes=80 * GiB)
    assert gpu.kv_cache_memory_bytes == 2 * GiB
    assert gpu.gpu_memory_utilization == -(-(fixed + 2 * GiB) * 100 // (80 * GiB)) / 100 == 0.1
    assert "--kv-cache-memory-bytes=2147483648" in gpu.reason and "fraction 0.1 = (weights" in gpu.reason
    with pytest.raises(ValueError, match="model config is needed to derive the GPU fraction"):
        resolve_engine_memory("cuda", "eval", None, 2 * GiB, None, 1024)
    both = resolve_engine_memory("cpu", "eval", 0.2, 128 * MiB, None, 1024)
    assert (both.gpu_memory_utilization, both.kv_cache_memory_bytes) == (0.2, 128 * MiB)
    assert "--gpu-memory-utilization=0.2" in both.reason


def test_cuda_defaults_are_deepscalers_per_purpose():
    train = resolve_engine_memory("cuda", "train", None, None, None, 9216)
    evaluation = resolve_engine_memory("cuda", "eval", None, None, None, 34304)
    assert (train.gpu_memory_utilization, train.kv_cache_memory_bytes) == (0.85, None)
    assert (evaluation.gpu_memory_utilization, evaluation.kv_cache_memory_bytes) == (0.9, None)
    assert "trainer" in train.reason and "eval" in evaluation.reason


def test_cpu_computes_the_kv_cache_from_the_model():
    memory = resolve_engine_memory("cpu", "train", None, None, FAKE, 1000, 32, "float32", ram_bytes=16 * GiB)
    # 32 sequences of 1000 tokens rounded up to 1024 (whole blocks) + one spare 256-token block, 4096 B/token.
    assert memory.kv_cache_memory_bytes == (32 * 1024 + 256) * 4096 == 135266304
    assert memory.gpu_memory_utilization == 0.1
    assert memory.reason.startswith("CPU: 129 MiB KV cache = (32 seqs x 1024 tokens + 256 spare) x 4096 B/token")
    # max_num_seqs above 256 is sized as 256; bfloat16 halves the bytes.
    many = resolve_engine_memory("cpu", "eval", None, None, FAKE, 1000, 1000, "bfloat16", ram_bytes=16 * GiB)
    assert many.kv_cache_memory_bytes == (256 * 1024 + 256) * 2048


def test_cpu_reads_the_config_of_a_model_folder(tiny_model_dir):
    """The tiny model: 2 layers, 1 KV head, head_dim 32, float32 = 512 B/token."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    from_folder = resolve_engine_memory("cpu", "train", None, None, str(tiny_model_dir), 1024, 256, "float32")
    from_config = resolve_engine_memory("cpu", "train", None, None, config, 1024, 256, "float32")
    assert from_folder == from_config and from_folder.kv_cache_memory_bytes == (256 * 1024 + 256) * 512


def test_cpu_size_is_clamped_to_floor_and_cap_but_always_holds_one_sequence():
    floor = resolve_engine_memory("cpu", "train", None, None, FAKE, 100, 4, "float32", ram_bytes=16 * GiB)
    assert floor.kv_cache_memory_bytes == CPU_KV_FLOOR_BYTES == 64 * MiB
    assert "floor (needed 5.0 MiB" in floor.reason
    cap = resolve_engine_memory("cpu", "train", None, None, FAKE, 8192, 256, "float32", ram_bytes=8 * GiB)
    assert cap.kv_cache_memory_bytes == 2 * GiB and "a quarter of 8192 MiB RAM" in cap.reason
    assert "holds 64 full-length sequences" in cap.reason  # 2 GiB / (8192 tokens x 4096 B)
    # A single sequence larger than the cap: vLLM could never serve max_model_len, so one sequence wins.
    one, reason = cpu_kv_cache_bytes(FAKE, 100_000, 8, "float32", ram_bytes=1 * GiB)
    assert one == (100_096 + 256) * 4096 and "one full-length sequence" in reason


def test_bad_requests_name_the_field():
    with pytest.raises(ValueError, match=r"rollout.gpu_memory_utilization=1.5 must be in \(0, 1\]"):
        resolve_engine_memory("cuda", "train", 1.5, None, None, 1024)
    with pytest.raises(ValueError, match="--kv-cache-memory-bytes=0 must be > 0"):
        resolve_engine_memory("cpu", "eval", None, 0, None, 1024)
    with pytest.raises(ValueError, match="purpose='serve'"):
        resolve_engine_memory("cuda", "serve", None, None, None, 1024)
    with pytest.raises(ValueError, match="or set rollout.kv_cache_memory_bytes"):
        resolve_engine_memory("cpu", "train", None, None, None, 1024)


def test_training_config_field_is_validated():
    from deepscaler.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.kv_cache_memory_bytes=-1 must be > 0"):
        load_config("demo", ["model.path=/tmp/x", "trainer.run_dir=/tmp/y", "rollout.kv_cache_memory_bytes=-1"])


def test_vllm_cpu_engine_starts_with_the_computed_kv_cache_and_generates(tiny_model_dir):
    pytest.importorskip("vllm")
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU rule; on a GPU vLLM sizes the KV cache from the fraction")
    from deepscaler.rollout import EngineConfig, RolloutEngine, SamplingSettings

    memory = resolve_engine_memory("cpu", "train", None, None, str(tiny_model_dir), 1024, 256, "float32")
    engine = RolloutEngine(EngineConfig(model=str(tiny_model_dir), dtype="float32", precision="fp32",
                                        max_model_len=1024, gpu_memory_utilization=memory.gpu_memory_utilization,
                                        extra_engine_kwargs=memory.engine_kwargs()))
    try:
        cache = engine.llm.llm_engine.vllm_config.cache_config
        assert cache.kv_cache_memory_bytes == memory.kv_cache_memory_bytes == 128 * MiB + 256 * 512
        # vLLM's own KV layout agrees with our bytes-per-token formula: its blocks fill exactly the given size.
        assert cache.num_gpu_blocks * cache.block_size * 512 == pytest.approx(memory.kv_cache_memory_bytes,
                                                                              abs=cache.block_size * 512)
        groups = engine.generate([[1, 2, 3, 4]] * 3, SamplingSettings(n=2, temperature=1.0, max_tokens=8, seed=0))
        assert [len(g) for g in groups] == [2, 2, 2]
        assert all(1 <= len(c.token_ids) <= 8 for g in groups for c in g)
    finally:
        engine.close()


def test_training_on_a_gpu_takes_the_memory_plans_fraction():
    plan = SimpleNamespace(gpu_memory_utilization=0.63, fraction_reason="largest that fits beside the trainer")
    memory = resolve_engine_memory("cuda", "train", None, None, None, 9216, plan=plan)
    assert (memory.gpu_memory_utilization, memory.kv_cache_memory_bytes) == (0.63, None)
    assert memory.reason == "memory plan: largest that fits beside the trainer"
    explicit_kv = resolve_engine_memory("cuda", "train", None, 4 * GiB, None, 9216, plan=plan)
    assert (explicit_kv.gpu_memory_utilization, explicit_kv.kv_cache_memory_bytes) == (0.63, 4 * GiB)
