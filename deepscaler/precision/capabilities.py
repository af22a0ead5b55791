"""Attention backend capabilities, as data.

Three tables:
- ``TRAINER_BACKENDS``: transformers ``attn_implementation`` values (plus our registered Triton kernel).
- ``SDPA_KERNELS``: PyTorch SDPA's CUDA sub-backends (informational; the trainer only names ``sdpa`` and
  PyTorch dispatches, but the rows explain what ``sdpa`` will really run, and ``bench attention`` uses them).
- ``VLLM_BACKENDS`` + ``VLLM_ERAS``: vLLM's decoder backends and how each vLLM version names, selects and
  accepts them (backend names, the env-var vs engine-argument mechanism, fp32 routes).

Sources: the flash-attn READMEs and issues, vLLM's PRs (numbers cited per era) and docs, and the installed vLLM
0.32 source (``AttentionBackendEnum``, each backend's ``supported_dtypes``, ``get_supported_head_sizes``,
``supports_compute_capability``; ``EngineArgs.attention_backend``; ``platforms/cuda.py``'s backend priorities).
Version bounds known only approximately are marked ``approx`` in ``VllmEra.notes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deepscaler.precision.probe import parse_version

HALF = frozenset({"float16", "bfloat16"})
ALL_FLOAT = frozenset({"float32", "float16", "bfloat16"})


@dataclass(frozen=True)
class HeadDims:
    """Which head dims a backend accepts: an explicit set, or ``max_dim`` and ``multiple_of`` bounds."""

    allowed: frozenset[int] | None = None
    """Exactly these head dims (None: no list)."""
    max_dim: int | None = None
    """Largest head dim accepted (None: unbounded)."""
    multiple_of: int = 1
    """Head dim must be a multiple of this."""

    def accepts(self, head_dim: int) -> bool:
        if self.allowed is not None and head_dim not in self.allowed:
            return False
        if self.max_dim is not None and head_dim > self.max_dim:
            return False
        return head_dim % self.multiple_of == 0

    def describe(self) -> str:
        if self.allowed is not None:
            return "{" + ",".join(str(d) for d in sorted(self.allowed)) + "}"
        parts = [f"<= {self.max_dim}" if self.max_dim else "any"]
        if self.multiple_of > 1:
            parts.append(f"multiple of {self.multiple_of}")
        return " ".join(parts)


ANY_HEAD_DIM = HeadDims()


@dataclass(frozen=True)
class BackendCapability:
    """What one attention backend supports. ``requires`` names probe checks (see ``requirement_problem``)."""

    name: str
    """Name the engine takes (transformers attn_implementation, or the canonical vLLM enum name)."""
    dtypes: frozenset[str]
    """Compute dtypes the kernel accepts."""
    devices: frozenset[str]
    """Device types: 'cuda', 'rocm', 'cpu', 'mps', 'xpu'."""
    min_cc: tuple[int, int] | None = None
    """Lowest CUDA compute capability (ignored off CUDA)."""
    head_dims: HeadDims = ANY_HEAD_DIM
    """Accepted head dims."""
    gqa: bool = True
    """Grouped-query attention (fewer K/V heads than Q heads) without the caller repeating K/V."""
    causal: bool = True
    """Causal masking."""
    sliding_window: bool = True
    """Sliding-window (local) attention."""
    varlen: str = "yes"
    """Packed variable-length sequences: 'yes' (cu_seqlens / position_ids), 'mask' (materialised block-diagonal
    mask, correct but O(S^2) memory), 'no'."""
    paged_kv: bool = False
    """Block-table (paged) KV cache."""
    backward: bool = True
    """Has a backward pass (trainable)."""
    deterministic: str = "yes"
    """'yes', 'option' (a deterministic mode exists), 'no', or a short explanation."""
    requires: tuple[str, ...] = ()
    """Probe requirements: package names ('flash_attn', 'flash_attn_3', 'flash_attn_4', 'triton'),
    'torch>=2.5', 'deepscaler_kernel'."""
    notes: str = ""
    """Caveats worth printing (speed traps, dispatch surprises)."""


# --------------------------------------------------------------------------------------------- trainer side
TRAINER_BACKENDS: dict[str, BackendCapability] = {c.name: c for c in [
    BackendCapability(
        "flash_attention_3", HALF, frozenset({"cuda"}), min_cc=(8, 0), head_dims=HeadDims(max_dim=256),
        deterministic="option", requires=("flash_attn_3",),
        notes="FA3 (Hopper-tuned, sm90a); sm80 builds exist but are slower than FA2 there"),
    BackendCapability(
        "flash_attention_4", HALF, frozenset({"cuda"}), min_cc=(9, 0), head_dims=HeadDims(max_dim=256),
        sliding_window=False, deterministic="no", requires=("flash_attn_4", "transformers>=5.0"),
        notes="FA4 (CuTe DSL), tuned for sm100; ~FA3 speed on Hopper; no sliding window on sm90 yet"),
    BackendCapability(
        "flash_attention_2", HALF, frozenset({"cuda", "rocm"}), min_cc=(8, 0), head_dims=HeadDims(max_dim=256),
        deterministic="option", requires=("flash_attn",),
        notes="packed sequences via position_ids (no mask); fp32 refused by the kernel"),
    BackendCapability(
        "deepscaler_flash", ALL_FLOAT, frozenset({"cuda"}), min_cc=(8, 0),
        head_dims=HeadDims(max_dim=256), sliding_window=False, requires=("deepscaler_kernel",),
        notes="deepscaler's Triton flash kernel (split-precision dots): fp32-accurate and faster than SDPA "
              "EFFICIENT fp32"),
    BackendCapability(
        "sdpa", ALL_FLOAT | {"float64"}, frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}), varlen="mask",
        deterministic="depends on the SDPA kernel (cuDNN refuses deterministic mode)",
        notes="PyTorch dispatches: bf16/fp16 -> cuDNN/FLASH/EFFICIENT; fp32 -> EFFICIENT (3xTF32, accurate) or "
              "MATH; fp32 + GQA without mask -> MATH (EFFICIENT has no enable_gqa)"),
    BackendCapability(
        "flex_attention", ALL_FLOAT, frozenset({"cuda", "rocm", "cpu", "xpu"}), varlen="yes",
        requires=("torch>=2.5",),
        notes="needs torch.compile; fp32 at default precision runs IEEE FMA (~4.8 TFLOP/s on H100), TF32 when "
              "allowed (1.3e-3 error)"),
    BackendCapability(
        "eager", ALL_FLOAT | {"float64"}, frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}), varlen="mask",
        notes="reference math in PyTorch ops; O(S^2) memory"),
]}

# Preference order for `auto`, by device generation and precision class ("half" = bf16/fp16, "fp32").
# Why: FA3/FA4 are the fastest 16-bit kernels on their generation; FA2 packs sequences without a mask;
# our Triton kernel is the fastest fp32-accurate kernel; SDPA-EFFICIENT is the fp32-accurate fallback;
# flex fp32 is last (IEEE FMA speed trap, anchors §0.2).
TRAINER_PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("sm100+", "half"): ("flash_attention_4", "flash_attention_2", "sdpa", "flex_attention", "eager"),
    ("sm90", "half"): ("flash_attention_3", "flash_attention_4", "flash_attention_2", "sdpa", "flex_attention",
                       "eager"),
    ("sm80", "half"): ("flash_attention_2", "flash_attention_3", "sdpa", "flex_attention", "eager"),
    ("gpu", "half"): ("sdpa", "flex_attention", "eager"),
    ("cpu", "half"): ("sdpa", "eager", "flex_attention"),
    ("gpu", "fp32"): ("deepscaler_flash", "sdpa", "eager", "flex_attention"),
    ("cpu", "fp32"): ("sdpa", "eager", "flex_attention"),
}


def trainer_generation(device_type: str, cc: tuple[int, int] | None) -> str:
    """Key into TRAINER_PREFERENCE: 'sm100+', 'sm90', 'sm80', 'gpu' (other accelerators) or 'cpu'."""
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda" and cc is not None:
        if cc >= (10, 0):
            return "sm100+"
        if cc[0] == 9:
            return "sm90"
        if cc >= (8, 0):
            return "sm80"
    return "gpu"


# ------------------------------------------------------------------------------------ SDPA sub-backends (CUDA)
SDPA_KERNELS: dict[str, BackendCapability] = {c.name: c for c in [
    BackendCapability(
        "FLASH_ATTENTION", HALF, frozenset({"cuda"}), min_cc=(8, 0), head_dims=HeadDims(max_dim=256),
        varlen="no", notes="fp32: 'No available kernel'; causal only via is_causal (no arbitrary mask)"),
    BackendCapability(
        "EFFICIENT_ATTENTION", ALL_FLOAT, frozenset({"cuda", "rocm"}), min_cc=(5, 0),
        head_dims=HeadDims(multiple_of=4), gqa=False,
        notes="fp32 on sm80+ uses 3xTF32 (FastF32): ~5e-7 error, ignores the TF32 flag; no enable_gqa"),
    BackendCapability(
        "CUDNN_ATTENTION", HALF, frozenset({"cuda"}), min_cc=(8, 0), head_dims=HeadDims(max_dim=128),
        deterministic="no", notes="PyTorch's bf16 default on H100; refused under deterministic algorithms"),
    BackendCapability(
        "MATH", ALL_FLOAT | {"float64"}, frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}),
        notes="any mask, any dtype; fp32 follows the TF32 flag; O(S^2) memory"),
]}


# -------------------------------------------------------------------------------------------- vLLM side
VLLM_BACKENDS: dict[str, BackendCapability] = {c.name: c for c in [
    BackendCapability(
        "FLASH_ATTN", HALF, frozenset({"cuda"}), min_cc=(8, 0), head_dims=HeadDims(max_dim=256, multiple_of=8),
        paged_kv=True, backward=False, deterministic="batch-invariant mode only",
        notes="vLLM's FA2/FA3/FA4 fork; fp32 fails validation"),
    BackendCapability(
        "FLASHINFER", HALF, frozenset({"cuda"}), min_cc=(8, 0),
        head_dims=HeadDims(allowed=frozenset({64, 128, 256, 512})), paged_kv=True, backward=False,
        deterministic="no", notes="log2-based LSE; vLLM's first choice on compute capability 10.x (B200/GB200)"),
    BackendCapability(
        "TRITON_ATTN", ALL_FLOAT, frozenset({"cuda", "rocm"}), paged_kv=True, backward=False,
        deterministic="batch-invariant mode", notes="portable Triton kernel; the fp32 route on current vLLM"),
    BackendCapability(
        "FLEX_ATTENTION", ALL_FLOAT, frozenset({"cuda", "rocm"}), paged_kv=True, backward=False,
        notes="first V1 fp32 path (0.9.2); also for sm < 8.0; fp32 at IEEE speed"),
    BackendCapability(
        "XFORMERS", HALF, frozenset({"cuda"}), head_dims=HeadDims(max_dim=256, multiple_of=8), paged_kv=True,
        backward=False, notes="removed in the v0.12 cycle; fp32 only in the V0 engine"),
    BackendCapability(
        "ROCM_ATTN", ALL_FLOAT, frozenset({"rocm"}), paged_kv=True, backward=False, notes="ROCm only"),
    BackendCapability(
        "CPU_ATTN", ALL_FLOAT, frozenset({"cpu"}),
        head_dims=HeadDims(allowed=frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})),
        paged_kv=True, backward=False, notes="the CPU platform always uses it (requests are ignored there)"),
    BackendCapability(
        "TORCH_SDPA", ALL_FLOAT, frozenset({"cpu"}), paged_kv=True, backward=False,
        notes="CPU backend before CPU_ATTN; today only a ViT tag"),
]}


@dataclass(frozen=True)
class VllmEra:
    """How one range of vLLM versions names, selects and accepts attention backends."""

    min_version: tuple[int, int, int]
    """First version of the era (inclusive)."""
    max_version: tuple[int, int, int] | None
    """First version after the era (exclusive); None = still current."""
    mechanism: str
    """'none' (no choice), 'env' (VLLM_ATTENTION_BACKEND before import) or 'kwarg' (LLM(attention_backend=))."""
    names: frozenset[str]
    """Enum members this era knows (the installed vLLM's source overrides this, see probe)."""
    spelling: dict[str, str]
    """Canonical name -> the name this era uses (e.g. TRITON_ATTN -> TRITON_ATTN_VLLM_V1 in 0.8–0.10)."""
    cuda_half: tuple[str, ...]
    """Canonical backends usable for bf16/fp16 on CUDA, best first."""
    cuda_fp32: tuple[str, ...]
    """Canonical backends usable for fp32 on CUDA, best first."""
    cpu: tuple[str, ...]
    """Canonical backend(s) the CPU platform runs."""
    notes: str = ""
    """What changed in this era (and which bounds are approximate)."""
    avoid: dict[str, str] | None = None
    """Canonical backend -> known bug in this era; ``auto`` ranks it last (an explicit request still works)."""
    extra_kwargs: dict[str, dict[str, object]] | None = None
    """Canonical backend -> extra LLM kwargs that work around a known bug in this era."""
    selects_by_dtype: bool = False
    """vLLM's own selector walks its priority list and skips backends that cannot serve the dtype, head size or
    compute capability (``validate_configuration``, vllm#24794, from 0.12): ``auto`` then names no backend."""

    def contains(self, version: tuple[int, ...]) -> bool:
        return tuple(version[:3]) >= self.min_version and (
            self.max_version is None or tuple(version[:3]) < self.max_version)

    def spell(self, canonical: str) -> str:
        return self.spelling.get(canonical, canonical)


_V0 = frozenset({"FLASH_ATTN", "XFORMERS", "ROCM_FLASH", "TORCH_SDPA", "FLASHINFER", "PALLAS", "OPENVINO", "IPEX"})
_V1_SUFFIXED = frozenset({"FLASH_ATTN_VLLM_V1", "TRITON_ATTN_VLLM_V1", "FLASHINFER_VLLM_V1", "TORCH_SDPA_VLLM_V1"})
_CURRENT = frozenset({"FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION", "ROCM_ATTN", "TORCH_SDPA",
                      "FLASH_ATTN_MLA", "TRITON_MLA", "CUTLASS_MLA", "FLASHMLA", "CUSTOM"})
_FA2_IMA = "FLASH_ATTN illegal-memory-access crashes in vLLM < 0.7.2 (vllm#10389/#11340, fixed by vllm#12848)"
_CASCADE = {"FLASH_ATTN": {"disable_cascade_attn": True}}  # wrong-LSE cascade path on 0.10.x (vllm#22103)

VLLM_ERAS: tuple[VllmEra, ...] = (
    VllmEra((0, 0, 0), (0, 4, 0), "none", frozenset(), {}, (), (), (),
            notes="single path: xformers prefill + PagedAttention decode; fp32 supported; nothing to choose"),
    VllmEra((0, 4, 0), (0, 7, 2), "env", _V0, {}, ("XFORMERS", "FLASH_ATTN"), ("XFORMERS",), ("TORCH_SDPA",),
            notes="V0 engine; the V0 selector itself routes fp32 to XFORMERS",
            avoid={"FLASH_ATTN": _FA2_IMA}),
    VllmEra((0, 7, 2), (0, 8, 0), "env", _V0, {}, ("FLASH_ATTN", "XFORMERS"), ("XFORMERS",), ("TORCH_SDPA",),
            notes="V0 engine, FA2 IMA fixed (vllm#12848)"),
    VllmEra((0, 8, 0), (0, 9, 0), "env", _V0 | _V1_SUFFIXED, {"TRITON_ATTN": "TRITON_ATTN_VLLM_V1"},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN"), ("XFORMERS",), ("TORCH_SDPA",),
            notes="V1 default; dtype=float32 falls back to the V0 engine (vllm#18014), where XFORMERS runs fp32"),
    VllmEra((0, 9, 0), (0, 9, 2), "env", _V0 | _V1_SUFFIXED | {"FLEX_ATTENTION"},
            {"TRITON_ATTN": "TRITON_ATTN_VLLM_V1"}, ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION"),
            ("XFORMERS",), ("TORCH_SDPA",), notes="FLEX_ATTENTION in V1; fp32 still falls back to V0"),
    VllmEra((0, 9, 2), (0, 10, 1), "env", _V0 | _V1_SUFFIXED | {"FLEX_ATTENTION"},
            {"TRITON_ATTN": "TRITON_ATTN_VLLM_V1"}, ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION"),
            ("FLEX_ATTENTION",), ("TORCH_SDPA",), notes="fp32 in V1 through FlexAttention (vllm#19754)",
            extra_kwargs=_CASCADE),
    VllmEra((0, 10, 1), (0, 11, 0), "env", _V0 | _V1_SUFFIXED | {"FLEX_ATTENTION", "XFORMERS_VLLM_V1"},
            {"TRITON_ATTN": "TRITON_ATTN_VLLM_V1", "XFORMERS": "XFORMERS_VLLM_V1"},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION", "XFORMERS"), ("FLEX_ATTENTION",),
            ("TORCH_SDPA",), notes="XFORMERS ported to V1 (vllm#21342), fp16/bf16 only",
            extra_kwargs=_CASCADE),
    VllmEra((0, 11, 0), (0, 12, 0), "env", _CURRENT | {"XFORMERS", "TREE_ATTN"}, {},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION", "XFORMERS"),
            ("FLEX_ATTENTION", "TRITON_ATTN"), ("TORCH_SDPA",),
            notes="V0 removed (vllm#25351), _VLLM_V1 suffixes dropped; V1 XFORMERS still present (approx: "
                  "fp32 order FLEX first because TRITON_ATTN fp32 is only confirmed for later versions)"),
    VllmEra((0, 12, 0), (0, 13, 0), "env", _CURRENT | {"CPU_ATTN"}, {},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION"), ("TRITON_ATTN", "FLEX_ATTENTION"),
            ("CPU_ATTN",), notes="XFORMERS backend and dependency removed (approx: 'v0.12 cycle', vllm#28287)",
            selects_by_dtype=True),
    VllmEra((0, 13, 0), (0, 15, 0), "kwarg", _CURRENT | {"CPU_ATTN"}, {},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION"), ("TRITON_ATTN", "FLEX_ATTENTION"),
            ("CPU_ATTN",), notes="attention_backend / AttentionConfig added (vllm#26315); env var deprecated",
            selects_by_dtype=True),
    VllmEra((0, 15, 0), None, "kwarg", _CURRENT | {"CPU_ATTN"}, {},
            ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "FLEX_ATTENTION"), ("TRITON_ATTN", "FLEX_ATTENTION"),
            ("CPU_ATTN",),
            notes="VLLM_ATTENTION_BACKEND removed (vllm#32812) and silently ignored; engine argument only",
            selects_by_dtype=True),
)


def vllm_era(version: tuple[int, ...]) -> VllmEra:
    """The era containing ``version`` (parse it with ``probe.parse_version``)."""
    for era in VLLM_ERAS:
        if era.contains(version):
            return era
    raise ValueError(f"no vLLM era covers version {version}")


def requirement_problem(requirement: str, probe_get: Callable[[str], object]) -> str | None:
    """Why ``requirement`` is unmet (None when met). ``probe_get(attr)`` reads the EnvironmentProbe."""
    if requirement == "deepscaler_kernel":
        if probe_get("deepscaler_kernel_available"):
            return None
        return "deepscaler.kernels reports unavailable (needs triton + CUDA sm80+)"
    if ">=" in requirement:
        package, minimum = requirement.split(">=", 1)
        have = parse_version(probe_get(f"{package}_version"))
        return None if have and have >= parse_version(minimum) else f"needs {requirement}"
    if probe_get(f"{requirement}_version"):
        return None
    return f"package {requirement.replace('_', '-')} not installed"
