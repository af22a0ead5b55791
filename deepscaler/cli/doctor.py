"""`deepscaler doctor`: what is installed, what deepscaler would choose, and whether it computes correctly.

Prints versions (python, torch + CUDA, GPU and compute capability, transformers, vLLM, flash-attn, xformers,
triton, our Triton kernel), relevant environment variables with secrets masked, the trainer and rollout
attention decisions for every precision preset (Qwen2-1.5B geometry by default, or ``--model PATH``), and the
numerical self-check of each trainer decision. Exit code 1 when a self-check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deepscaler.precision import (
    PRESETS,
    QWEN2_1_5B,
    ModelGeometry,
    default_policy_name,
    get_policy,
    parse_version,
    probe_environment,
    resolve_attention,
    self_check,
)
from deepscaler.precision.registration import ensure_backend_registered

ENV_PREFIXES = ("VLLM_", "CUDA_", "HF_", "TORCH_", "PYTORCH_", "TRANSFORMERS_", "NCCL_", "TRITON_")
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
SECRET_VALUE = re.compile(r"^(hf_|sk-|ghp_|github_pat_|xox[abp]-)[A-Za-z0-9_\-]{8,}")


def register(subparsers: Any) -> None:
    """Add the ``doctor`` sub-command."""
    parser = subparsers.add_parser("doctor", help="environment, attention/precision decisions and self-checks",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or hub id whose config sets the geometry "
                        "(default: Qwen2-1.5B geometry, 12q/2kv heads, head dim 128)")
    parser.add_argument("--presets", default=None, help="comma-separated presets (default: all)")
    parser.add_argument("--no-self-check", action="store_true", help="skip the numerical self-checks")
    parser.add_argument("--seq-len", type=int, default=None, help="self-check sequence length (CPU 128, GPU 1024)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.set_defaults(func=run)


def masked_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables with a relevant prefix; values of secret-looking names (or values) replaced by '****'."""
    environ = os.environ if environ is None else environ
    shown = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIXES):
            continue
        value = environ[name]
        shown[name] = "****" if SECRET_NAME.search(name) or SECRET_VALUE.match(value) else value
    return shown


def env_var_warnings(environ: dict[str, str], vllm_version: str | None) -> list[str]:
    """Warnings about attention env vars that the installed vLLM ignores or deprecates."""

    warnings = []
    value = environ.get("VLLM_ATTENTION_BACKEND")
    version = parse_version(vllm_version)
    if value and version:
        if version >= (0, 15, 0):
            warnings.append(f"VLLM_ATTENTION_BACKEND={value} is silently ignored by vLLM {vllm_version} (removed in "
                            "0.15); deepscaler passes attention_backend= to the engine instead")
        elif version >= (0, 13, 0):
            warnings.append(f"VLLM_ATTENTION_BACKEND={value} is deprecated in vLLM {vllm_version}; deepscaler "
                            "passes attention_backend= instead")
    return warnings


def collect_report(model: str | None = None, presets: list[str] | None = None, run_self_check: bool = True,
                   seq_len: int | None = None, env=None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The doctor report as a JSON-able dict (the CLI prints it)."""

    env = env or probe_environment()
    environ = dict(os.environ) if environ is None else environ
    if model:
        # local: `deepscaler --help` imports this module to build its parser and must stay free of torch
        from transformers import AutoConfig

        geometry = ModelGeometry.from_config(AutoConfig.from_pretrained(model))
    else:
        geometry = QWEN2_1_5B
    default_name, default_reason = default_policy_name(env)
    report: dict[str, Any] = {
        "environment": {k: v for k, v in asdict(env).items() if k != "vllm_backend_names"},
        "vllm_backend_names": list(env.vllm_backend_names or []),
        "env_vars": masked_environment(environ),
        "env_warnings": env_var_warnings(environ, env.vllm_version),
        "geometry": asdict(geometry) | {"source": model or "Qwen2-1.5B (default)"},
        "default_preset": {"name": default_name, "reason": default_reason},
        "decisions": [],
    }
    device = "cuda" if env.device_type == "cuda" else "cpu"
    seq_len = seq_len or (1024 if device == "cuda" else 128)
    for name in presets or list(PRESETS):
        policy = get_policy(name)
        entry: dict[str, Any] = {"preset": policy.name, "description": policy.description}
        for engine in ("trainer", "rollout"):
            try:
                decision = resolve_attention(engine, geometry, policy, env=env)
                entry[engine] = {"backend": decision.backend, "reason": decision.reason,
                                 "rejected": decision.rejected, "engine_kwargs": decision.engine_kwargs,
                                 "env_vars": decision.env_vars, "notes": decision.notes,
                                 "compute_dtype": decision.compute_dtype}
            except ValueError as exc:
                entry[engine] = {"backend": None, "reason": f"ERROR: {exc}", "rejected": [], "notes": []}
        trainer_backend = entry["trainer"]["backend"]
        if run_self_check and trainer_backend and env.device_type in ("cuda", "cpu"):
            # the check calls the backend through transformers' AttentionInterface: our kernel registers there
            # on first use (as load_causal_lm does when training picks it)
            ensure_backend_registered(trainer_backend)
            result = self_check(trainer_backend, policy, geometry.head_dim, geometry.num_heads,
                                geometry.num_kv_heads, device=device, seq_len=seq_len)
            entry["self_check"] = {"passed": result.passed, "summary": result.summary(),
                                   "cases": [asdict(c) for c in result.cases]}
        report["decisions"].append(entry)
    return report


def print_report(report: dict[str, Any]) -> None:

    console = Console(width=160)
    env = report["environment"]
    versions = Table(title="environment", show_header=False)
    cc = env["compute_capability"]
    rows = [
        ("python", env["python_version"]),
        ("torch", f"{env['torch_version']} (CUDA {env['torch_cuda_version'] or '-'}, cuDNN {env['cudnn_version'] or '-'})"),
        ("device", f"{env['device_type']} {env['gpu_name'] or ''}" + (f" sm{cc[0]}{cc[1]}" if cc else "")),
        ("transformers", env["transformers_version"] or "not installed"),
        ("vllm", env["vllm_version"] or "not installed"),
        ("flash-attn", env["flash_attn_version"] or "not installed"),
        ("flash-attn-3", env["flash_attn_3_version"] or "not installed"),
        ("xformers", env["xformers_version"] or "not installed"),
        ("triton", env["triton_version"] or "not installed"),
        ("deepscaler_flash kernel", ("available" if env["deepscaler_kernel_available"] else "unavailable")
         + (f": {env['extra'].get('deepscaler_kernel')}" if env["extra"].get("deepscaler_kernel") else "")),
    ]
    for key, value in rows:
        versions.add_row(key, str(value))
    console.print(versions)
    if report["env_vars"]:
        console.print("environment variables: " + ", ".join(f"{k}={v}" for k, v in report["env_vars"].items()))
    for warning in report["env_warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    geometry = report["geometry"]
    console.print(f"geometry: {geometry['source']}: {geometry['num_heads']} q heads, {geometry['num_kv_heads']} "
                  f"kv heads, head dim {geometry['head_dim']}")
    default = report["default_preset"]
    console.print(f"default precision preset: [bold]{default['name']}[/] ({default['reason']})")
    table = Table(title="attention decisions per precision preset")
    for column in ("preset", "engine", "backend", "reason / notes", "self-check"):
        table.add_column(column, overflow="fold")
    for entry in report["decisions"]:
        check = entry.get("self_check")
        for engine in ("trainer", "rollout"):
            d = entry[engine]
            text = d["reason"] + ("" if not d["notes"] else " | " + " | ".join(d["notes"]))
            if d.get("engine_kwargs"):
                text += f" | vllm.LLM kwargs {d['engine_kwargs']}"
            if d.get("env_vars"):
                text += f" | env {d['env_vars']}"
            verdict = "-"
            if engine == "trainer" and check:
                detail = check["summary"].split(": ", 1)[-1].split(" ", 1)[-1]
                verdict = ("[green]PASS[/] " if check["passed"] else "[red]FAIL[/] ") + detail
            elif engine == "rollout":
                verdict = "end-to-end (logprob mismatch)"
            table.add_row(entry["preset"], engine, str(d["backend"]), text, verdict)
    console.print(table)


def run(args: argparse.Namespace) -> int:
    presets = [p.strip() for p in args.presets.split(",")] if args.presets else None
    report = collect_report(args.model, presets, not args.no_self_check, args.seq_len)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    failed = [e["preset"] for e in report["decisions"] if e.get("self_check") and not e["self_check"]["passed"]]
    if failed:
        print(f"SELF-CHECK FAILED for presets: {', '.join(failed)}")
        return 1
    return 0
