"""Data parallelism (torchrun + FSDP2, gloo on CPU): two ranks train exactly like one process.

Every rank samples its slice of the prompts with the seeds one process would use, so both runs see the same
samples and rewards; the loss denominators are global and FSDP sums the ranks' gradients, so the weights after
each step agree up to float32 reduction order. The two-rank run is also interrupted after its second step and
resumed (full optimizer state gathered into the checkpoint, re-sharded on load), and its step-2 checkpoint is
resumed by a single process too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from deepscaler.training.distributed import SINGLE_PROCESS, DistInfo  # noqa: E402

WORKER = Path(__file__).with_name("dp_worker.py")


def run_worker(ranks: int, model_dir: Path, run_dir: Path, steps: int, out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                 str(29500 + os.getpid() % 1000)] if ranks > 1 else [sys.executable])
    done = subprocess.run([*launcher, str(WORKER), str(model_dir), str(run_dir), str(steps), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    single = run_worker(1, tiny_model_dir, root / "single", 3, root / "single.json")
    # two ranks: 2 steps, then a new launch resumes from the step-2 checkpoint and does step 3
    run_worker(2, tiny_model_dir, root / "dp", 2, root / "dp_first.json")
    resumed = run_worker(2, tiny_model_dir, root / "dp", 3, root / "dp_resumed.json")
    # the two-rank checkpoint of step 2 resumed by one process: a checkpoint does not depend on the rank count
    shutil.copytree(root / "dp" / "checkpoints" / "step_000002", root / "cross" / "checkpoints" / "step_000002")
    run_worker(1, tiny_model_dir, root / "cross", 3, root / "cross.json")
    return root, single, resumed


def test_shards_cover_every_item_once():
    assert [DistInfo(rank=r, world_size=4).shard(8) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [DistInfo(rank=r, world_size=2).split(5) for r in range(2)] == [(0, 2), (2, 5)]
    assert SINGLE_PROCESS.shard(6) == (0, 6) and not SINGLE_PROCESS.enabled
    with pytest.raises(ValueError, match="split evenly"):
        DistInfo(rank=0, world_size=4).shard(6)


def test_each_rank_takes_its_local_rank_among_all_visible_gpus():
    from deepscaler.training.distributed import rank_device

    assert rank_device(3, 8) == 3  # every GPU stays visible (vLLM's external_launcher reads LOCAL_RANK)
    with pytest.raises(RuntimeError, match="at most one process per visible GPU"):
        rank_device(2, 2)


def test_rank_metrics_combine_as_one_batch():
    from deepscaler.training.distributed import combine_rank_metrics

    ranks = [{"rollout/num_tokens": 30.0, "rollout/logprob_diff": 0.1, "rollout/logprob_diff_max": 0.5},
             {"rollout/num_tokens": 10.0, "rollout/logprob_diff": 0.5, "rollout/logprob_diff_max": 0.9}, {}]
    combined = combine_rank_metrics(ranks)
    assert combined["rollout/num_tokens"] == 40.0
    assert combined["rollout/logprob_diff"] == pytest.approx((30 * 0.1 + 10 * 0.5) / 40)  # per token, not per rank
    assert combined["rollout/logprob_diff_max"] == 0.9


def test_mini_batches_of_whole_groups_keep_their_count():
    """Every rank makes the same number of optimizer steps: with fewer groups than mini-batches some are empty."""
    from deepscaler.training.update import split_groups

    assert split_groups([7, 7, 8, 8, 9, 9, 10, 10], 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_groups([7, 7, 8, 8], 4) == [[], [0, 1], [2, 3], []]
    assert len(split_groups([], 3)) == 3


def test_two_ranks_train_like_one_process(runs, tiny_model_dir):
    root, single, resumed = runs
    dp_rows = json.loads((root / "dp_first.json").read_text()) + resumed
    assert [r["step"] for r in dp_rows] == [1, 2, 3] == [r["step"] for r in single]
    for one, two in zip(single, dp_rows, strict=True):
        # the same samples: rewards, lengths and the kept groups agree exactly
        for key in ("reward/mean", "response_length/mean", "batch/groups_kept", "batch/rollout_batches",
                    "val/pass@1/toy"):
            assert one[key] == two[key], (one["step"], key, one[key], two[key])
        for key in ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), (one["step"], key)
    initial = weights(Path(tiny_model_dir))
    runs_compared = [(step, "dp") for step in (1, 2, 3)] + [(3, "cross")]
    for step, other in runs_compared:
        name = f"step_{step:06d}"
        one, two = weights(root / "single" / "checkpoints" / name), weights(root / other / "checkpoints" / name)
        assert one.keys() == two.keys()
        # training really changed the weights, and both runs changed them alike: the gap is float32 reduction
        # order, which Adam's g / sqrt(v) amplifies only on near-zero gradient entries
        moved = sum(float((one[k] - initial[k]).square().sum()) for k in one) ** 0.5
        apart = sum(float((one[k] - two[k]).square().sum()) for k in one) ** 0.5
        assert moved > 1e-2, (step, moved)
        assert apart < 1e-3 * moved, (step, apart, moved)


def test_data_parallel_checkpoint_is_a_plain_one(runs):
    """Rank 0 writes a full Hugging Face checkpoint and a full optimizer state; every rank saves its RNG."""
    from transformers import AutoModelForCausalLM

    root, _, _ = runs
    checkpoint = root / "dp" / "checkpoints" / "step_000003"
    assert (checkpoint / "rng.pt").is_file() and (checkpoint / "rng_rank1.pt").is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["data_parallel_ranks"] == 2 and state["step"] == 3
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=False)["optimizer"]
    assert len(saved["state"]) == len(list(model.parameters()))  # one full (unsharded) entry per parameter
    first = next(iter(saved["state"].values()))
    assert any(first["exp_avg"].shape == p.shape for p in model.parameters())


def test_fsdp2_gets_the_policys_mixed_precision_for_16_bit_policies(monkeypatch):
    """Layers all-gather in the compute dtype and reduce in float32; the root (embeddings, LM head) keeps its
    float32 weights; float32 policies shard without a mixed-precision policy (recorded fully_shard calls)."""
    import torch.distributed.fsdp as fsdp
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from deepscaler.precision import get_policy
    from deepscaler.training import distributed
    from deepscaler.training.distributed import DistInfo, shard_model

    calls = []
    monkeypatch.setattr(distributed, "init_device_mesh", lambda *args, **kwargs: "mesh")
    monkeypatch.setattr(distributed, "fully_shard",
                        lambda module, **kwargs: calls.append((type(module).__name__, kwargs)))
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1))
    shard_model(model, DistInfo(0, 2, 0, "gloo"), get_policy("bf16-mixed"))
    layers, root = calls[:-1], calls[-1]
    assert len(layers) == model.config.num_hidden_layers
    assert all(kw["mp_policy"] == fsdp.MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
               for _, kw in layers)
    assert root == ("Qwen2ForCausalLM", {"mesh": "mesh", "mp_policy": fsdp.MixedPrecisionPolicy(
        reduce_dtype=torch.float32)})
    calls.clear()
    shard_model(model, DistInfo(0, 2, 0, "gloo"), get_policy("fp32"))
    assert all(set(kw) == {"mesh"} for _, kw in calls)
