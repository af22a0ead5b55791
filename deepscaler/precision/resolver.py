"""Choose the attention backend for the trainer (transformers) and the rollout engine (vLLM), with reasons.

``resolve_attention`` is a pure function of (engine, model geometry, precision policy, request, environment
probe); every branch is forced in tests with hand-built probes. It decides on the *effective compute dtype*
(autocast / FSDP mixed precision for the trainer, the vLLM dtype for rollout), so fp32 master weights with bf16
compute keep flash attention, and fp32 compute never reaches a 16-bit-only kernel. For vLLM it returns the
engine argument (``attention_backend=``) or, for versions where that was the mechanism, the environment
variable, and never a backend name the installed version does not know. In ``auto`` mode a vLLM whose own selector
skips backends that cannot serve the dtype (vLLM >= 0.12) is given no name at all, so it can fall back by itself
(e.g. from a FlashAttention build that lacks this GPU's architecture).

On the machine it runs on, a trainer backend is also numerically self-checked (``selfcheck.self_check``, once per
process) before it is chosen: one that fails or raises here is excluded, the next compatible one is taken, and the
decision says why. deepscaler's own Triton kernel is chosen automatically only after its self-check passed in this
process. The decision's record (``AttentionDecision``, ``ModelGeometry``, ``log_decision``) lives in ``decision.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from deepscaler.precision.capabilities import (
    HALF,
    TRAINER_BACKENDS,
    TRAINER_PREFERENCE,
    VLLM_BACKENDS,
    BackendCapability,
    HeadDims,
    VllmEra,
    requirement_problem,
    trainer_generation,
    vllm_era,
)
from deepscaler.precision.decision import (
    AttentionBackendError,
    AttentionDecision,
    ModelGeometry,
    log_decision,
)
from deepscaler.precision.policy import PrecisionPolicy, get_policy
from deepscaler.precision.probe import EnvironmentProbe, parse_version, probe_environment
from deepscaler.precision.registration import OUR_KERNEL
from deepscaler.precision.selfcheck import SelfCheckResult, machine_self_check

ENGINES = ("trainer", "rollout")
Verifier = Callable[[str, PrecisionPolicy, "ModelGeometry"], SelfCheckResult]
"""(backend, policy, geometry) -> the backend's numerical self-check on this machine."""
ON_INCOMPATIBLE = ("fallback", "error")
FA_FALSE_ALARM_NOTE = ("master weights are float32, so transformers warns at load that flash attention needs "
                       "fp16/bf16; the forward runs in {compute} (autocast / FSDP mixed precision), so that "
                       "warning is a false alarm and load_causal_lm filters it")


# ---------------------------------------------------------------------------------------------- checks
def _device(env: EnvironmentProbe) -> str:
    return "rocm" if env.device_type == "cuda" and env.is_rocm else env.device_type


def _problems(cap: BackendCapability, dtype: str, geometry: ModelGeometry, env: EnvironmentProbe) -> list[str]:
    """Reasons ``cap`` cannot run (empty = compatible)."""
    problems = []
    device = _device(env)
    if dtype not in cap.dtypes:
        accepted = "/".join(sorted(cap.dtypes - {"float64"}))
        problems.append(f"{dtype} compute unsupported (accepts {accepted})")
    if device not in cap.devices:
        problems.append(f"runs on {'/'.join(sorted(cap.devices))}, this is {device}")
    elif device == "cuda" and cap.min_cc and env.compute_capability and env.compute_capability < cap.min_cc:
        problems.append(f"needs sm{cap.min_cc[0]}{cap.min_cc[1]}+, have {env.cc_label}")
    if not cap.head_dims.accepts(geometry.head_dim):
        problems.append(f"head_dim {geometry.head_dim} unsupported (accepts {cap.head_dims.describe()})")
    if geometry.num_kv_heads != geometry.num_heads and not cap.gqa:
        problems.append("no GQA")
    if geometry.sliding_window and not cap.sliding_window:
        problems.append("no sliding-window attention")
    for requirement in cap.requires:
        problem = requirement_problem(requirement, lambda attr: getattr(env, attr, None))
        if problem:
            problems.append(problem)
    return problems


def _trainer_candidates(dtype: str, env: EnvironmentProbe) -> list[BackendCapability]:
    klass = "half" if dtype in HALF else "fp32"
    generation = trainer_generation(env.device_type, env.compute_capability)
    key = (generation, klass) if (generation, klass) in TRAINER_PREFERENCE else (
        ("cpu" if generation == "cpu" else "gpu"), klass)
    caps = dict(TRAINER_BACKENDS)
    caps["deepscaler_flash"] = _with_head_dims(caps["deepscaler_flash"], env.deepscaler_kernel_max_head_dim)
    order = list(TRAINER_PREFERENCE[key]) + [name for name in caps if name not in TRAINER_PREFERENCE[key]]
    return [caps[name] for name in order]


def _with_head_dims(cap: BackendCapability, max_dim: int) -> BackendCapability:
    return replace(cap, head_dims=HeadDims(max_dim=max_dim))


def _rollout_candidates(dtype: str, env: EnvironmentProbe, era: VllmEra) -> list[BackendCapability]:
    device = _device(env)
    if device == "cpu":
        order = list(era.cpu)
    elif device == "rocm":
        order = ["ROCM_ATTN", "TRITON_ATTN", "FLEX_ATTENTION"]
    else:
        order = list(era.cuda_fp32 if dtype == "float32" else era.cuda_half)
        if env.compute_capability and env.compute_capability[0] == 10 and "FLASHINFER" in order:
            # vLLM's own order (vllm/platforms/cuda.py, _get_backend_priorities): FLASHINFER first on major 10
            # (B200/GB200) only; sm120 (RTX Blackwell) and sm110 keep FLASH_ATTN first.
            order.remove("FLASHINFER")
            order.insert(0, "FLASHINFER")
    avoid = era.avoid or {}
    order = [n for n in order if n not in avoid] + [n for n in order if n in avoid]
    order += [name for name in VLLM_BACKENDS if name not in order]
    caps = []
    for name in order:
        cap = VLLM_BACKENDS[name]
        if device in ("cuda", "rocm") and name not in ("ROCM_ATTN",):
            # fp32 acceptance changed across versions: the era's fp32 list is authoritative on GPUs.
            cap = replace(cap, dtypes=HALF | ({"float32"} if name in era.cuda_fp32 else set()))
        if device == "cpu" and name not in era.cpu:
            cap = replace(cap, devices=cap.devices - {"cpu"})
        caps.append(cap)
    return caps


def _known_names(env: EnvironmentProbe, era: VllmEra) -> frozenset[str]:
    return frozenset(env.vllm_backend_names) if env.vllm_backend_names else era.names


def _canonical_vllm(name: str) -> str:
    return name.strip().upper().removesuffix("_VLLM_V1")


# --------------------------------------------------------------------------------------------- resolver
def resolve_attention(engine: str, model_config: Any, policy: PrecisionPolicy | str,
                      request: str = "auto", on_incompatible: str = "fallback",
                      env: EnvironmentProbe | None = None, verify: Verifier | None = None,
                      exclude: Mapping[str, str] | None = None) -> AttentionDecision:
    """Pick the attention backend for ``engine`` ('trainer' | 'rollout').

    ``request="auto"`` takes the best compatible backend; an explicit name is honoured when compatible, else
    ``on_incompatible="fallback"`` picks ``auto`` (logged as a warning) and ``"error"`` raises
    AttentionBackendError listing what would work. The decision is logged once per process.

    ``verify`` runs a trainer backend's numerical self-check; a backend whose check fails is treated as
    incompatible. None: the real, cached self-check when ``env`` is this process's machine (omitted or equal to
    ``probe_environment()``), no check for a hand-built probe (then our own kernel is never chosen by ``auto``).

    ``exclude`` maps backend names to the reason they must not be used (e.g. a kernel fault in an earlier attempt
    of the run, from its incident report); they count as incompatible, so ``auto`` takes the next one.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if on_incompatible not in ON_INCOMPATIBLE:
        raise ValueError(f"on_incompatible must be one of {ON_INCOMPATIBLE}, got {on_incompatible!r}")
    policy = get_policy(policy)
    env = env or probe_environment()
    geometry = ModelGeometry.from_config(model_config)
    request = (request or "auto").strip()
    excluded = {(name if engine == "trainer" else _canonical_vllm(name)): f"excluded: {why}"
                for name, why in (exclude or {}).items()}
    if engine == "trainer":
        if verify is None and env == probe_environment():
            verify = machine_self_check
        decision = _resolve_trainer(geometry, policy, request, on_incompatible, env, verify, excluded)
    else:
        decision = _resolve_rollout(geometry, policy, request, on_incompatible, env, excluded)
    log_decision(decision)
    return decision


def _choose(candidates: list[BackendCapability], dtype: str, geometry: ModelGeometry, env: EnvironmentProbe,
            request: str, on_incompatible: str, engine: str, extra_problems=None,
            spell=lambda name: name, checked=None) -> tuple[str | None, str, list[tuple[str, str]], bool]:
    """Shared auto/explicit logic: (chosen name, reason, rejected, fell_back).

    ``checked(name)``: None when the backend may be used on this machine, else why not (a failed self-check);
    asked lazily, in preference order, only for backends compatible on paper.
    """
    problems = {c.name: _problems(c, dtype, geometry, env) + (extra_problems(c.name) if extra_problems else [])
                for c in candidates}
    asked: set[str] = set()

    def usable(name: str) -> bool:
        """Compatible on paper and, when ``checked`` is given, not ruled out on this machine (asked once)."""
        if not problems[name] and checked is not None and name not in asked:
            asked.add(name)
            failure = checked(name)
            if failure:
                problems[name].append(failure)
        return not problems[name]

    def first_usable() -> str | None:
        return next((c.name for c in candidates if usable(c.name)), None)

    def compatible() -> list[str]:
        return [c.name for c in candidates if not problems[c.name]]

    def rejected_except(chosen: str | None) -> list[tuple[str, str]]:
        out = []
        for c in candidates:
            if c.name == chosen:
                continue
            why = "; ".join(problems[c.name]) if problems[c.name] else f"compatible, ranked below {spell(chosen)}"
            out.append((spell(c.name), why))
        return out

    if request.lower() == "auto":
        best = first_usable()
        if best is None:
            raise AttentionBackendError(
                f"no {engine} attention backend can run {dtype} with head_dim {geometry.head_dim} on "
                f"{env.cc_label}: " + "; ".join(f"{spell(n)}: {', '.join(p)}" for n, p in problems.items()))
        reason = f"best compatible backend for {dtype} compute on {env.cc_label}"
        failed = [spell(n) for n, p in problems.items() if any(x.startswith(SELF_CHECK_FAILED) for x in p)]
        if failed:
            reason += f" that passed its self-check here ({', '.join(failed)} failed theirs, see rejected)"
        return best, reason, rejected_except(best), False

    wanted = request if engine == "trainer" else _canonical_vllm(request)
    if engine == "trainer":
        wanted = wanted.lower()
    if wanted not in problems:
        problems[wanted] = [f"unknown {engine} backend (known: {', '.join(spell(c.name) for c in candidates)})"]
    if usable(wanted):
        return wanted, f"requested explicitly and compatible with {dtype} compute on {env.cc_label}", \
            rejected_except(wanted), False
    best = first_usable()
    why_not = "; ".join(problems[wanted])
    working = ", ".join(spell(n) for n in compatible()) or "none"
    if on_incompatible == "error" or best is None:
        raise AttentionBackendError(
            f"{engine} attention backend {request!r} cannot run here: {why_not}. Compatible: {working}. "
            f"Fix: set attention_backend to one of those or 'auto' (or on_incompatible='fallback').")
    reason = f"requested {request!r} is incompatible ({why_not}); fell back to {spell(best)}"
    rejected = [(spell(wanted), why_not)] + [r for r in rejected_except(best) if r[0] != spell(wanted)]
    return best, reason, rejected, True


SELF_CHECK_FAILED = "self-check FAILED on this machine"
NOT_SELF_CHECKED = "not self-checked on this GPU in this process"


def _resolve_trainer(geometry: ModelGeometry, policy: PrecisionPolicy, request: str, on_incompatible: str,
                     env: EnvironmentProbe, verify: Verifier | None = None,
                     excluded: Mapping[str, str] | None = None) -> AttentionDecision:
    dtype = policy.compute_dtype
    candidates = _trainer_candidates(dtype, env)
    self_checks: dict[str, str] = {}

    def checked(name: str) -> str | None:
        """Why ``name`` may not be used here (None: usable): its self-check failed or raised; our own kernel
        also needs a passed check, so without a verifier ``auto`` never picks it."""
        if verify is None:
            if name == OUR_KERNEL and request.lower() == "auto":
                return f"{NOT_SELF_CHECKED} (auto picks it only after its self-check passed)"
            return None
        try:
            result = verify(name, policy, geometry)
        except Exception as exc:  # a check that cannot even run is a failed check, with its text
            self_checks[name] = f"{type(exc).__name__}: {exc}"[:300]
            return f"{SELF_CHECK_FAILED} ({self_checks[name]})"
        self_checks[name] = result.summary()
        if result.skipped:
            return None if name != OUR_KERNEL else f"{NOT_SELF_CHECKED} ({result.skipped})"
        return None if result.passed else f"{SELF_CHECK_FAILED} ({result.summary()})"

    known = {c.name for c in candidates}
    if request.lower() not in ("auto", *known) and _registered_in_transformers(request):
        return AttentionDecision(
            "trainer", request, "requested; registered in transformers' AttentionInterface but not in "
            "deepscaler's capability table, so it is not validated (run `deepscaler doctor` to self-check)",
            compute_dtype=dtype, request=request)
    backend, reason, rejected, fell_back = _choose(candidates, dtype, geometry, env, request, on_incompatible,
                                                   "trainer", extra_problems=_excluded_problems(excluded),
                                                   checked=checked)
    notes = []
    if backend and backend.startswith("flash_attention") and policy.param_dtype == "float32":
        notes.append(FA_FALSE_ALARM_NOTE.format(compute=dtype))
    if dtype == "float32" and policy.allow_tf32 and env.device_type == "cuda":
        notes.append("TF32 matmuls allowed (fp32-fast): attention error ~1e-3, worse than fp16 attention")
    if (backend == "sdpa" and dtype == "float32" and env.device_type == "cuda"
            and geometry.num_kv_heads != geometry.num_heads):
        notes.append("SDPA fp32 with GQA and no mask dispatches to the MATH kernel (EFFICIENT has no enable_gqa)")
    if backend == "flex_attention" and dtype == "float32":
        notes.append("flex_attention fp32 runs IEEE FMA (~10x slower than SDPA EFFICIENT on H100)")
    return AttentionDecision("trainer", backend, reason, rejected, compute_dtype=dtype, request=request,
                             fell_back=fell_back, notes=notes, self_checks=self_checks)


def _resolve_rollout(geometry: ModelGeometry, policy: PrecisionPolicy, request: str, on_incompatible: str,
                     env: EnvironmentProbe, excluded: Mapping[str, str] | None = None) -> AttentionDecision:
    dtype = policy.rollout_dtype
    version = parse_version(env.vllm_version)
    if version is None:
        return AttentionDecision("rollout", None, "vLLM is not installed; nothing to configure",
                                 compute_dtype=dtype, request=request)
    era = vllm_era(version)
    if era.mechanism == "none":
        if request.lower() not in ("auto", "xformers"):
            message = f"vLLM {env.vllm_version} has a single attention path (xformers); {request!r} is unknown"
            if on_incompatible == "error":
                raise AttentionBackendError(message + ". Fix: attention_backend='auto'.")
        return AttentionDecision("rollout", None, f"vLLM {env.vllm_version}: {era.notes}", compute_dtype=dtype,
                                 request=request, fell_back=request.lower() not in ("auto", "xformers"))
    known = _known_names(env, era)

    def unknown_name(name: str) -> list[str]:
        """A name this vLLM's enum lacks is never passed (it would fail, or be ignored, at engine start)."""
        unknown = [] if era.spell(name) in known else [f"unknown to vLLM {env.vllm_version}"]
        return unknown + _excluded_problems(excluded)(name)

    avoid = era.avoid or {}
    candidates = _rollout_candidates(dtype, env, era)
    backend, reason, rejected, fell_back = _choose(candidates, dtype, geometry, env, request, on_incompatible,
                                                   "rollout", extra_problems=unknown_name, spell=era.spell)
    if request.lower() == "auto" and avoid:
        rejected = [(n, why + f" (ranked last: {avoid[_canonical_vllm(n)]})")
                    if _canonical_vllm(n) in avoid and why.startswith("compatible") else (n, why)
                    for n, why in rejected]
    spelled = era.spell(backend)
    notes = [f"vLLM {env.vllm_version}: {era.notes}"]
    engine_kwargs: dict[str, Any] = {}
    env_vars: dict[str, str] = {}
    named, why = rollout_backend_named(request, era, _device(env))
    if not named:
        reason = f"{reason}; {why}"
    elif era.mechanism == "kwarg":
        engine_kwargs["attention_backend"] = spelled
    else:
        env_vars["VLLM_ATTENTION_BACKEND"] = spelled
        notes.append("this vLLM takes the backend from VLLM_ATTENTION_BACKEND: set env_vars before importing vllm")
    engine_kwargs.update((era.extra_kwargs or {}).get(backend, {}))
    return AttentionDecision("rollout", spelled, reason, rejected, engine_kwargs, env_vars, dtype, request,
                             fell_back, notes, named=named)


def rollout_backend_named(request: str, era: VllmEra, device: str) -> tuple[bool, str]:
    """(pass the backend name to vLLM?, why). A name pins vLLM to one backend: if that backend cannot start
    (e.g. a FlashAttention build without this GPU's architecture) vLLM raises instead of taking its next one.
    So ``auto`` names a backend only where vLLM's own choice would be wrong for the dtype: before vLLM 0.12 its
    selector did not skip backends that refuse the dtype (fp32 needed a name; old eras also rank around known
    bugs). The CPU platform always runs its own backend."""
    if request.lower() != "auto":
        return True, "requested explicitly"
    if device == "cpu":
        return False, "not named: vLLM's CPU platform always runs its CPU backend"
    if era.selects_by_dtype:
        return False, ("not named: this vLLM's own selector skips backends that cannot serve the dtype and "
                       "falls back by itself, in the order ranked here")
    return True, "named: this vLLM's selector does not check the dtype"


def _excluded_problems(excluded: Mapping[str, str] | None) -> Callable[[str], list[str]]:
    """``extra_problems`` for :func:`_choose`: the reason a backend is excluded, if it is."""
    return lambda name: [excluded[name]] if excluded and name in excluded else []


def _registered_in_transformers(name: str) -> bool:
    try:  # local: importing deepscaler.precision stays free of transformers (see the package docstring)
        from transformers import AttentionInterface
    except ImportError:
        return False
    return name in AttentionInterface._global_mapping or name in getattr(AttentionInterface(), "_local_mapping", {})
