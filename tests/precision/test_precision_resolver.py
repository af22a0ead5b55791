"""Every resolver branch, forced through hand-built environment probes (no GPU needed)."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest

from deepscaler.precision import (
    QWEN2_1_5B,
    VLLM_BACKENDS,
    VLLM_ERAS,
    AttentionBackendError,
    EnvironmentProbe,
    ModelGeometry,
    get_policy,
    probe_environment,
    resolve_attention,
    vllm_era,
)
from deepscaler.precision.probe import parse_version
from deepscaler.precision.selfcheck import SelfCheckCase, SelfCheckResult

pytestmark = pytest.mark.numerics  # rerun by .ci/run under ATEN_CPU_CAPABILITY=avx2, one thread

CPU = EnvironmentProbe(device_type="cpu", torch_version="2.13.0", transformers_version="5.19.0",
                       vllm_version="0.32.0")


def gpu(cc=(9, 0), **kw) -> EnvironmentProbe:
    base = dict(device_type="cuda", gpu_name="NVIDIA H100", compute_capability=cc, torch_version="2.11.0",
                transformers_version="5.19.0", vllm_version="0.32.0", triton_version="3.6.0")
    base.update(kw)
    return EnvironmentProbe(**base)


def rejected_reason(decision, name):
    return dict(decision.rejected)[name]


# ------------------------------------------------------------------------------------------------ trainer
def test_cpu_trainer_picks_sdpa_for_every_preset():
    for preset in ("bf16-mixed", "fp16-mixed", "fp32", "fp32-fast"):
        decision = resolve_attention("trainer", QWEN2_1_5B, preset, env=CPU)
        assert decision.backend == "sdpa"
        assert "runs on cuda" in rejected_reason(decision, "flash_attention_2")
        assert decision.engine_kwargs == {} and decision.env_vars == {}


def test_bf16_mixed_with_fp32_master_keeps_flash_attention_and_explains_the_false_alarm():
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=gpu(flash_attn_version="2.8.3"))
    assert decision.backend == "flash_attention_2"
    assert decision.compute_dtype == "bfloat16"
    assert any("false alarm" in note for note in decision.notes)
    assert "flash-attn-3 not installed" in rejected_reason(decision, "flash_attention_3")


def test_sm90_prefers_fa3_when_installed_and_sm80_prefers_fa2():
    both = dict(flash_attn_version="2.8.3", flash_attn_3_version="3.0.0")
    assert resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=gpu((9, 0), **both)).backend == \
        "flash_attention_3"
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=gpu((8, 0), **both))
    assert decision.backend == "flash_attention_2"
    assert "ranked below flash_attention_2" in rejected_reason(decision, "flash_attention_3")


def test_fp32_compute_never_reaches_a_16bit_kernel():
    env = gpu(flash_attn_version="2.8.3", flash_attn_3_version="3.0.0")
    decision = resolve_attention("trainer", QWEN2_1_5B, "fp32", env=env)
    assert decision.backend == "sdpa"
    for name in ("flash_attention_2", "flash_attention_3"):
        assert "float32 compute unsupported" in rejected_reason(decision, name)
    assert "deepscaler.kernels reports unavailable" in rejected_reason(decision, "deepscaler_flash")
    assert any("MATH kernel" in note for note in decision.notes)  # fp32 + GQA through SDPA


def passing(name, policy, geometry):
    """A verifier whose self-check passes (what a working GPU reports)."""
    result = SelfCheckResult(name, policy.precision_class(), policy.compute_dtype, 1e-5, "cuda")
    result.cases = [SelfCheckCase("causal", 2e-7, 1e-7, True, True), SelfCheckCase("packed", 2e-7, 1e-7, True, True)]
    return result


def failing_for(*broken: str, raises: bool = False):
    """A verifier under which the ``broken`` backends fail their self-check (or the check itself raises),
    recording every backend it was asked about."""
    asked = []

    def verify(name, policy, geometry):
        asked.append(name)
        if name not in broken:
            return passing(name, policy, geometry)
        if raises:
            raise RuntimeError("pack_vnni2 is only supported when avx512 is supported")
        result = passing(name, policy, geometry)
        result.cases[1] = SelfCheckCase("packed", float("nan"), float("nan"), False, False,
                                        "RuntimeError: pack_vnni2 is only supported when avx512 is supported")
        return result

    verify.asked = asked
    return verify


def test_fp32_prefers_our_kernel_on_sm80_plus_once_its_self_check_passed_and_respects_its_head_dim_limit():
    env = gpu(flash_attn_version="2.8.3", deepscaler_kernel_available=True)
    assert resolve_attention("trainer", QWEN2_1_5B, "fp32", env=env, verify=passing).backend == "deepscaler_flash"
    big = ModelGeometry(num_heads=8, num_kv_heads=8, head_dim=512)
    decision = resolve_attention("trainer", big, "fp32", env=env, verify=passing)
    assert decision.backend == "sdpa"
    assert "head_dim 512 unsupported" in rejected_reason(decision, "deepscaler_flash")
    windowed = ModelGeometry(num_heads=12, num_kv_heads=2, head_dim=128, sliding_window=4096)
    assert "no sliding-window" in rejected_reason(resolve_attention("trainer", windowed, "fp32", env=env),
                                                  "deepscaler_flash")


def test_our_kernel_is_chosen_automatically_only_after_its_self_check_passed():
    env = gpu(deepscaler_kernel_available=True)
    unchecked = resolve_attention("trainer", QWEN2_1_5B, "fp32", env=env)  # no verifier: never checked here
    assert unchecked.backend == "sdpa"
    assert "not self-checked on this GPU in this process" in rejected_reason(unchecked, "deepscaler_flash")
    failed = resolve_attention("trainer", QWEN2_1_5B, "fp32", env=env, verify=failing_for("deepscaler_flash"))
    assert failed.backend == "sdpa"
    assert "self-check FAILED on this machine" in rejected_reason(failed, "deepscaler_flash")
    assert "deepscaler_flash failed theirs" in failed.reason and "pack_vnni2" in failed.self_checks["deepscaler_flash"]

    def skipped(name, policy, geometry):
        result = passing(name, policy, geometry)
        result.skipped, result.cases = "no CUDA device", []
        return result

    assert resolve_attention("trainer", QWEN2_1_5B, "fp32", env=env, verify=skipped).backend == "sdpa"
    # an explicit request is the user's choice: honoured without a check, still refused when its check fails
    assert resolve_attention("trainer", QWEN2_1_5B, "fp32", request="deepscaler_flash", env=env).backend == \
        "deepscaler_flash"


def test_a_backend_failing_its_self_check_is_excluded_and_the_next_one_taken():
    """What ATEN_CPU_CAPABILITY=avx2 does to bf16 SDPA on an AMX CPU ("pack_vnni2 is only supported when avx512
    is supported"): the self-check reports FAIL, the resolver takes the next compatible backend and says why."""
    for raises in (False, True):
        verify = failing_for("sdpa", raises=raises)
        decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=CPU, verify=verify)
        assert decision.backend == "eager" and verify.asked == ["sdpa", "eager"]
        assert "sdpa failed theirs" in decision.reason
        assert "pack_vnni2" in rejected_reason(decision, "sdpa") and "pack_vnni2" in decision.self_checks["sdpa"]
    passed = failing_for()
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=CPU, verify=passed)
    assert decision.backend == "sdpa" and passed.asked == ["sdpa"]  # only the chosen one is checked
    assert "self-check" not in decision.reason and "PASS" in decision.self_checks["sdpa"]


def test_an_explicit_request_failing_its_self_check_falls_back_or_raises():
    verify = failing_for("sdpa")
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", request="sdpa", env=CPU, verify=verify)
    assert decision.fell_back and decision.backend == "eager" and "self-check FAILED" in decision.reason
    with pytest.raises(AttentionBackendError, match="'sdpa' cannot run here: self-check FAILED"):
        resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", request="sdpa", on_incompatible="error", env=CPU,
                          verify=verify)


def test_nothing_passing_its_self_check_is_a_clear_error():
    with pytest.raises(AttentionBackendError) as info:
        resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=CPU,
                          verify=failing_for("sdpa", "eager", "flex_attention"))
    message = str(info.value)
    assert message.startswith("no trainer attention backend can run bfloat16")
    assert all(f"{name}: self-check FAILED on this machine" in message for name in ("sdpa", "eager", "flex_attention"))


def test_this_machine_is_self_checked_and_a_hand_built_probe_is_not(monkeypatch):
    """Without a verifier the real (cached) self-check runs when the probe is this machine's."""
    import deepscaler.precision.resolver as resolver

    asked = []

    def recording(name, policy, geometry):
        asked.append(name)
        return passing(name, policy, geometry)

    monkeypatch.setattr(resolver, "machine_self_check", recording)
    resolve_attention("trainer", QWEN2_1_5B, "fp32", env=CPU)
    assert asked == []
    decision = resolve_attention("trainer", QWEN2_1_5B, "fp32")
    assert asked == [decision.backend]


def test_sm75_and_missing_flash_attn_fall_to_sdpa():
    decision = resolve_attention("trainer", QWEN2_1_5B, "fp16-mixed", env=gpu((7, 5), flash_attn_version="2.8.3"))
    assert decision.backend == "sdpa"
    assert "needs sm80+" in rejected_reason(decision, "flash_attention_2")
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", env=gpu((8, 0)))
    assert decision.backend == "sdpa"
    assert "flash-attn not installed" in rejected_reason(decision, "flash_attention_2")


def test_fp32_fast_is_labelled_tf32_on_cuda():
    decision = resolve_attention("trainer", QWEN2_1_5B, "fp32-fast", env=gpu())
    assert any("TF32" in note for note in decision.notes)
    assert not any("TF32" in n for n in resolve_attention("trainer", QWEN2_1_5B, "fp32", env=gpu()).notes)


def test_explicit_request_compatible_is_honoured():
    decision = resolve_attention("trainer", QWEN2_1_5B, "bf16-mixed", request="eager",
                                 env=gpu(flash_attn_version="2.8.3"))
    assert decision.backend == "eager" and not decision.fell_back
    assert "ranked below eager" in rejected_reason(decision, "flash_attention_2")


def test_explicit_incompatible_request_falls_back_with_a_warning(caplog):
    env = gpu(flash_attn_version="2.8.3")
    with caplog.at_level(logging.INFO, logger="deepscaler.precision"):
        decision = resolve_attention("trainer", QWEN2_1_5B, "fp32", request="flash_attention_2", env=env)
    assert decision.backend == "sdpa" and decision.fell_back
    assert "float32 compute unsupported" in decision.reason
    assert decision.rejected[0][0] == "flash_attention_2"
    assert any(r.levelno == logging.WARNING and "fell back" in r.getMessage() for r in caplog.records)


def test_explicit_incompatible_request_with_error_lists_what_works():
    with pytest.raises(AttentionBackendError) as info:
        resolve_attention("trainer", QWEN2_1_5B, "fp32", request="flash_attention_2", on_incompatible="error",
                          env=gpu(flash_attn_version="2.8.3"))
    message = str(info.value)
    assert "float32 compute unsupported" in message and "Compatible: sdpa, eager" in message
    with pytest.raises(AttentionBackendError, match="unknown trainer backend"):
        resolve_attention("trainer", QWEN2_1_5B, "fp32", request="flash_attention_9", on_incompatible="error",
                          env=CPU)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_attention("serve", QWEN2_1_5B, "fp32", env=CPU)
    with pytest.raises(ValueError, match="on_incompatible"):
        resolve_attention("trainer", QWEN2_1_5B, "fp32", on_incompatible="ignore", env=CPU)
    with pytest.raises(ValueError, match="num_attention_heads"):
        resolve_attention("trainer", {"hidden_size": 64}, "fp32", env=CPU)


# ------------------------------------------------------------------------------------------------ rollout
def test_current_vllm_auto_names_no_backend_and_an_explicit_request_uses_the_engine_argument():
    """vLLM >= 0.12 skips backends that cannot serve the dtype itself, so auto passes no name (a FlashAttention
    build lacking the card's architecture then falls back inside vLLM instead of raising)."""
    env = gpu(vllm_version="0.32.0")
    half = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=env)
    assert half.backend == "FLASH_ATTN" and not half.named  # what vLLM's own order picks
    assert half.engine_kwargs == {} and half.env_vars == {} and "not named" in half.reason
    assert half.describe().startswith("attention[rollout]=vLLM's choice (expected FLASH_ATTN)")
    fp32 = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=env)
    assert fp32.backend == "TRITON_ATTN" and fp32.engine_kwargs == {} and not fp32.named
    assert "float32 compute unsupported" in rejected_reason(fp32, "FLASH_ATTN")
    assert "float32 compute unsupported" in rejected_reason(fp32, "FLASHINFER")
    explicit = resolve_attention("rollout", QWEN2_1_5B, "fp32", request="FLEX_ATTENTION", env=env)
    assert explicit.named and explicit.engine_kwargs == {"attention_backend": "FLEX_ATTENTION"}


def test_a_vllm_without_dtype_aware_selection_gets_a_name():
    """Before vLLM 0.12 its selector did not skip backends refusing the dtype: auto names the backend."""
    fp32 = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=gpu(vllm_version="0.11.0"))
    assert fp32.named and fp32.env_vars == {"VLLM_ATTENTION_BACKEND": "FLEX_ATTENTION"}
    assert not vllm_era((0, 11, 2)).selects_by_dtype and vllm_era((0, 12, 0)).selects_by_dtype


def test_xformers_is_never_passed_to_a_vllm_that_removed_it():
    env = gpu(vllm_version="0.32.0")
    decision = resolve_attention("rollout", QWEN2_1_5B, "fp16-mixed", request="XFORMERS", env=env)
    assert decision.fell_back and decision.backend == "FLASH_ATTN"
    assert "unknown to vLLM 0.32.0" in decision.reason
    with pytest.raises(AttentionBackendError, match="unknown to vLLM 0.32.0"):
        resolve_attention("rollout", QWEN2_1_5B, "fp16-mixed", request="XFORMERS", on_incompatible="error",
                          env=env)


def test_flashinfer_first_only_on_compute_capability_10_as_in_vllm():
    env = gpu((10, 0), vllm_version="0.32.0")
    assert resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=env).backend == "FLASHINFER"
    assert resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=gpu((10, 3))).backend == "FLASHINFER"
    odd = ModelGeometry(num_heads=8, num_kv_heads=8, head_dim=96)
    decision = resolve_attention("rollout", odd, "bf16-mixed", env=env)
    assert decision.backend == "FLASH_ATTN"
    assert "head_dim 96 unsupported" in rejected_reason(decision, "FLASHINFER")
    for cc in ((12, 0), (11, 0), (9, 0)):  # RTX Blackwell (sm120), Thor (sm110), Hopper: FLASH_ATTN first
        decision = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=gpu(cc))
        assert decision.backend == "FLASH_ATTN", cc
        assert "ranked below FLASH_ATTN" in rejected_reason(decision, "FLASHINFER")


def test_flashinfer_ordering_matches_the_installed_vllm_source():
    """vLLM's _get_backend_priorities (platforms/cuda.py) puts FLASHINFER first under `major == 10` only."""
    source = (_installed_vllm_root() / "platforms" / "cuda.py").read_text()
    function = source[source.index("def _get_backend_priorities"):]
    after = function.split("if device_capability.major == 10 and not use_non_causal:", 1)[1]
    major_10, other = after.split("else:", 1)
    flashinfer, flash_attn = "AttentionBackendEnum.FLASHINFER,", "AttentionBackendEnum.FLASH_ATTN,"
    assert major_10.index(flashinfer) < major_10.index(flash_attn)
    assert other.index(flash_attn) < other.index(flashinfer)


def test_old_vllm_with_xformers_uses_the_env_var():
    env = gpu(vllm_version="0.6.3")
    half = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=env)
    assert half.backend == "XFORMERS"  # FLASH_ATTN ranked last: illegal-memory-access bugs before 0.7.2
    assert half.env_vars == {"VLLM_ATTENTION_BACKEND": "XFORMERS"} and half.engine_kwargs == {}
    assert "illegal-memory-access" in rejected_reason(half, "FLASH_ATTN")
    explicit = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="FLASH_ATTN", env=env)
    assert explicit.backend == "FLASH_ATTN" and not explicit.fell_back
    fp32 = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=env)
    assert fp32.backend == "XFORMERS"


def test_v1_era_spellings_and_fp32_routes():
    v08 = gpu(vllm_version="0.8.5")
    triton = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="TRITON_ATTN", env=v08)
    assert triton.backend == "TRITON_ATTN_VLLM_V1"
    assert triton.env_vars == {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN_VLLM_V1"}
    assert resolve_attention("rollout", QWEN2_1_5B, "fp32", env=v08).backend == "XFORMERS"  # V0 fallback
    v010 = gpu(vllm_version="0.10.2")
    half = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", env=v010)
    assert half.backend == "FLASH_ATTN" and half.engine_kwargs == {"disable_cascade_attn": True}
    xf = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="xformers", env=v010)
    assert xf.backend == "XFORMERS_VLLM_V1" and not xf.fell_back
    xf32 = resolve_attention("rollout", QWEN2_1_5B, "fp32", request="XFORMERS", env=v010)
    assert xf32.fell_back and xf32.backend == "FLEX_ATTENTION"


def test_env_var_era_ends_at_0_13_and_xformers_ends_at_0_12():
    assert resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="XFORMERS",
                             env=gpu(vllm_version="0.11.2")).backend == "XFORMERS"
    d012 = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="XFORMERS", env=gpu(vllm_version="0.12.0"))
    assert d012.fell_back and d012.env_vars == {"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}
    d013 = resolve_attention("rollout", QWEN2_1_5B, "bf16-mixed", request="FLASH_ATTN",
                             env=gpu(vllm_version="0.13.0"))
    assert d013.engine_kwargs == {"attention_backend": "FLASH_ATTN"} and d013.env_vars == {}


def test_vllm_without_a_choice_or_absent():
    ancient = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=gpu(vllm_version="0.3.3"))
    assert ancient.backend is None and ancient.engine_kwargs == {} and ancient.env_vars == {}
    absent = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=gpu(vllm_version=None))
    assert absent.backend is None and "not installed" in absent.reason


def test_cpu_rollout_runs_cpu_attn_without_naming_it():
    decision = resolve_attention("rollout", QWEN2_1_5B, "fp32", env=CPU)
    assert decision.backend == "CPU_ATTN" and decision.engine_kwargs == {} and not decision.named
    assert "CPU platform always runs its CPU backend" in decision.reason
    fallback = resolve_attention("rollout", QWEN2_1_5B, "fp32", request="TRITON_ATTN", env=CPU)
    assert fallback.fell_back and fallback.backend == "CPU_ATTN"
    explicit = resolve_attention("rollout", QWEN2_1_5B, "fp32", request="CPU_ATTN", env=CPU)
    assert explicit.engine_kwargs == {"attention_backend": "CPU_ATTN"}


@pytest.mark.parametrize("era", VLLM_ERAS, ids=lambda e: ".".join(map(str, e.min_version)))
def test_auto_never_names_a_backend_its_era_does_not_know(era):
    version = ".".join(map(str, era.min_version))
    for env in (gpu((8, 0), vllm_version=version), gpu((10, 0), vllm_version=version),
                EnvironmentProbe(device_type="cpu", vllm_version=version)):
        for preset in ("bf16-mixed", "fp32"):
            decision = resolve_attention("rollout", QWEN2_1_5B, preset, env=env)
            if era.mechanism == "none":
                assert decision.backend is None
                continue
            assert decision.backend in era.names
            if get_policy(preset).rollout_dtype == "float32" and env.device_type == "cuda":
                assert not decision.backend.startswith(("FLASH_ATTN", "FLASHINFER"))


# ------------------------------------------------------------------------------- logging, geometry, data
def test_decision_is_logged_once_per_process(caplog):
    env = gpu((8, 6), vllm_version="0.32.0")
    with caplog.at_level(logging.INFO, logger="deepscaler.precision"):
        first = resolve_attention("trainer", ModelGeometry(7, 7, 64), "fp16-mixed", env=env)
        resolve_attention("trainer", ModelGeometry(7, 7, 64), "fp16-mixed", env=env)
    lines = [r.getMessage() for r in caplog.records if r.getMessage() == first.describe()]
    assert len(lines) == 1
    assert "\n" not in first.describe() and first.describe().startswith("attention[trainer]=sdpa")


def test_geometry_from_hf_config_ignores_inactive_sliding_window():
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, sliding_window=4096,
                         use_sliding_window=False)
    assert ModelGeometry.from_config(config) == QWEN2_1_5B
    windowed = Qwen2Config(hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, sliding_window=4096,
                           use_sliding_window=True)
    assert ModelGeometry.from_config(windowed).sliding_window == 4096


def test_parse_version_and_eras_cover_every_version():
    assert parse_version("0.10.1.post1+cu128") == (0, 10, 1)
    assert parse_version("0.32") == (0, 32, 0)
    assert vllm_era((0, 32, 0)).mechanism == "kwarg"
    assert vllm_era((0, 14, 9)).notes.startswith("attention_backend")
    for before, after in zip(VLLM_ERAS, VLLM_ERAS[1:], strict=False):
        assert before.max_version == after.min_version


def _installed_vllm_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None:
        pytest.skip("vllm not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _supported_dtypes(path: Path, class_name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", "") == "supported_dtypes":
                    return {elt.attr for elt in stmt.value.elts}
    raise AssertionError(f"{class_name}.supported_dtypes not found in {path}")


def test_capability_data_matches_the_installed_vllm_source():
    """The fp32/16-bit acceptance we encode for the current era equals each backend's supported_dtypes."""
    root = _installed_vllm_root()
    env = probe_environment()
    era = vllm_era(parse_version(env.vllm_version))
    assert set(era.names) - {"XFORMERS"} <= set(env.vllm_backend_names)
    assert "XFORMERS" not in env.vllm_backend_names
    classes = {"FLASH_ATTN": ("flash_attn.py", "FlashAttentionBackend"),
               "FLASHINFER": ("flashinfer.py", "FlashInferBackend"),
               "TRITON_ATTN": ("triton_attn.py", "TritonAttentionBackend"),
               "FLEX_ATTENTION": ("flex_attention.py", "FlexAttentionBackend"),
               "CPU_ATTN": ("cpu_attn.py", "CPUAttentionBackend")}
    for name, (file, cls) in classes.items():
        actual = _supported_dtypes(root / "v1/attention/backends" / file, cls)
        expected = set(VLLM_BACKENDS[name].dtypes)
        if name != "CPU_ATTN":
            expected = {"float16", "bfloat16"} | ({"float32"} if name in era.cuda_fp32 else set())
        assert actual == expected, name
    arg_utils = (root / "engine/arg_utils.py").read_text()
    assert "attention_backend: AttentionBackendEnum | None" in arg_utils  # the engine argument we pass


_VLLM_SCRIPT = """
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from transformers import AutoConfig
from deepscaler.precision import resolve_attention

def main(path):
    decision = resolve_attention("rollout", AutoConfig.from_pretrained(path), "fp32")
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from deepscaler.rollout import EngineConfig, RolloutEngine, SamplingSettings
    try:
        AttentionBackendEnum["XFORMERS"]
        xformers = "known"
    except ValueError as exc:
        xformers = str(exc)
    # RolloutEngine applies the same decision (env vars, engine kwargs) and sizes the CPU KV cache
    engine = RolloutEngine(EngineConfig(model=path, dtype="float32", precision="fp32", max_model_len=128,
                                        attention_backend="CPU_ATTN"))
    out = engine.generate([[1, 4, 50, 60]], SamplingSettings(max_tokens=4, temperature=0, logprobs=False))
    backend = engine.llm.llm_engine.vllm_config.attention_config.backend
    print(json.dumps({"kwargs": decision.engine_kwargs, "engine_kwargs": engine.decision.engine_kwargs,
                      "backend": getattr(backend, "name", str(backend)), "tokens": out[0][0].token_ids,
                      "xformers": xformers}))

if __name__ == "__main__":
    main(sys.argv[1])
"""


def test_installed_vllm_accepts_the_decision_and_rejects_xformers(tiny_model_dir, tmp_path):
    """End to end: vLLM 0.32 starts with an explicitly requested backend, and its own enum refuses XFORMERS."""
    import json
    import subprocess
    import sys

    _installed_vllm_root()
    script = tmp_path / "run_vllm.py"
    script.write_text(_VLLM_SCRIPT)
    # this checkout's deepscaler, whatever copy the interpreter has installed
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kwargs"] == {}  # auto names no backend on CPU
    assert result["engine_kwargs"] == {"attention_backend": "CPU_ATTN"}  # an explicit request is passed...
    assert result["backend"] == "CPU_ATTN"  # ...and vLLM accepts it
    assert len(result["tokens"]) == 4
    assert result["xformers"].startswith("Unknown attention backend: 'XFORMERS'")
