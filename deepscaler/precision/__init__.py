"""Precision policies and attention-backend resolution for the trainer (transformers) and rollout (vLLM).

Importing this package is cheap (no torch/transformers/vLLM import): the CLI's subcommand modules import it at their
top, so torch and transformers are imported inside the functions that use them.
"""

from deepscaler.precision.capabilities import (
    SDPA_KERNELS,
    TRAINER_BACKENDS,
    VLLM_BACKENDS,
    VLLM_ERAS,
    BackendCapability,
    vllm_era,
)
from deepscaler.precision.decision import (
    QWEN2_1_5B,
    AttentionBackendError,
    AttentionDecision,
    ModelGeometry,
    log_decision,
)
from deepscaler.precision.loading import load_causal_lm
from deepscaler.precision.mismatch import assess_mismatch, logprob_mismatch
from deepscaler.precision.policy import (
    PRESETS,
    PrecisionPolicy,
    canonical_dtype,
    default_policy_name,
    get_policy,
    to_torch_dtype,
)
from deepscaler.precision.probe import EnvironmentProbe, parse_version, probe_environment
from deepscaler.precision.resolver import resolve_attention
from deepscaler.precision.selfcheck import PRECISION_TOLERANCES, SelfCheckError, SelfCheckResult, self_check

__all__ = [
    "PRECISION_TOLERANCES", "PRESETS", "QWEN2_1_5B", "SDPA_KERNELS", "TRAINER_BACKENDS", "VLLM_BACKENDS",
    "VLLM_ERAS", "AttentionBackendError", "AttentionDecision", "BackendCapability", "EnvironmentProbe",
    "ModelGeometry", "PrecisionPolicy", "SelfCheckError", "SelfCheckResult", "assess_mismatch", "canonical_dtype",
    "default_policy_name", "get_policy", "load_causal_lm", "log_decision", "logprob_mismatch", "parse_version",
    "probe_environment", "resolve_attention", "self_check", "to_torch_dtype", "vllm_era",
]
