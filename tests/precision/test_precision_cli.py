"""`deepscaler doctor` and `deepscaler bench attention` through a local argparse harness (real runs on CPU)."""

from __future__ import annotations

import argparse
import json

from deepscaler.cli import bench, doctor
from deepscaler.precision import EnvironmentProbe


def _parse(argv):
    parser = argparse.ArgumentParser(prog="deepscaler")
    subparsers = parser.add_subparsers(dest="command", required=True)
    doctor.register(subparsers)
    bench.register(subparsers)
    return parser.parse_args(argv)


def test_secrets_are_masked_and_irrelevant_vars_hidden():
    shown = doctor.masked_environment({"HF_TOKEN": "hf_abcdefghijklmnopq", "VLLM_API_KEY": "x",
                                       "CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "hf_abcdefghijklmnop1234",
                                       "HOME": "/root", "WANDB_API_KEY": "secret"})
    assert shown == {"CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "****", "HF_TOKEN": "****", "VLLM_API_KEY": "****"}


def test_env_var_warnings_follow_the_vllm_version():
    environ = {"VLLM_ATTENTION_BACKEND": "XFORMERS"}
    assert "silently ignored" in doctor.env_var_warnings(environ, "0.32.0")[0]
    assert "deprecated" in doctor.env_var_warnings(environ, "0.13.1")[0]
    assert doctor.env_var_warnings(environ, "0.6.3") == []


def test_report_for_an_injected_h100_probe():
    env = EnvironmentProbe(device_type="cuda", gpu_name="NVIDIA H100", compute_capability=(9, 0),
                           torch_version="2.11.0", transformers_version="5.19.0", vllm_version="0.32.0",
                           flash_attn_version="2.8.3")
    report = doctor.collect_report(env=env, run_self_check=False, environ={"HF_TOKEN": "abc"})
    by_preset = {d["preset"]: d for d in report["decisions"]}
    assert report["default_preset"]["name"] == "bf16-mixed"
    assert by_preset["bf16-mixed"]["trainer"]["backend"] == "flash_attention_2"
    assert by_preset["fp32"]["trainer"]["backend"] == "sdpa"
    # vLLM 0.32 picks by itself (its selector skips backends that refuse fp32): no name is passed
    assert by_preset["fp32"]["rollout"]["backend"] == "TRITON_ATTN"
    assert by_preset["fp32"]["rollout"]["engine_kwargs"] == {}
    assert report["env_vars"] == {"HF_TOKEN": "****"}
    assert report["geometry"]["head_dim"] == 128 and report["geometry"]["num_kv_heads"] == 2


def test_doctor_runs_on_this_machine_with_self_checks(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "doctor.json"
    args = _parse(["doctor", "--model", str(tiny_model_dir), "--presets", "fp32,bf16-mixed", "--seq-len", "32",
                   "--json", str(out)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert report["geometry"]["head_dim"] == 32 and report["geometry"]["num_heads"] == 2
    for entry in report["decisions"]:
        assert entry["self_check"]["passed"], entry["self_check"]["summary"]
        assert entry["rollout"]["backend"] == "CPU_ATTN"
    printed = capsys.readouterr().out
    assert "transformers" in printed and "attention decisions" in printed


def test_bench_attention_writes_table_json_and_png(tmp_path, capsys):
    args = _parse(["bench", "attention", "--lengths", "16,32", "--dtypes", "float32,bfloat16", "--backends",
                   "sdpa,eager,sdpa:math", "--iters", "1", "--warmup", "0", "--heads", "4", "--kv-heads", "2",
                   "--head-dim", "32", "--out", str(tmp_path)])
    assert args.func(args) == 0
    rows = json.loads((tmp_path / "attention_bench.json").read_text())["rows"]
    assert len(rows) == 3 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_tflops"] > 0
        assert r["rel_err"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
    assert (tmp_path / "attention_bench.png").stat().st_size > 1000
    assert "fwd+bwd" in capsys.readouterr().out


def test_bench_records_unsupported_combinations_instead_of_crashing():
    row = bench.bench_cell("no_such_backend", "float32", 16, batch=1, heads=2, kv_heads=1, head_dim=32,
                           device="cpu", iters=1, warmup=0, backward=False)
    assert row["status"].startswith("KeyError") and "fwd_ms" not in row
    assert bench.causal_flops(1, 1, 4, 8) == 4 * 4 * 4 * 8 / 2
