"""Bounded time: a pathological expression returns within the bound in-process, from a thread and in the
pool; a hung or crashed worker yields the incorrect reward and the pool recovers. Order is kept."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from deepscaler.rewards import RewardConfig, close_pool, is_equivalent, math_reward, score_responses
from deepscaler.rewards.pool import BoundedPool, choose_start_method, get_pool
from deepscaler.rewards.reward import score_in_pool

# SymPy needs more than 20 s to decide this (measured once by hand); the bound must cut it short.
SLOW_PRED = "(x+y+z)^{30}"
SLOW_GOLD = "(x+y+z+1)^{29}"
SLOW_RESPONSE = f"<think>expand</think>\\boxed{{{SLOW_PRED}}}"
BOUND_S = 1.0
SLACK_S = 10.0  # generous: process scheduling on a loaded machine; an unbounded run takes > 20 s


@pytest.fixture(scope="module")
def pool():
    close_pool()
    yield get_pool(1)
    close_pool()


def _warm() -> None:
    assert is_equivalent("x+1", "1+x")  # imports math-verify outside the timed region


def test_in_process_bound():
    _warm()
    start = time.monotonic()
    assert is_equivalent(SLOW_PRED, SLOW_GOLD, timeout_s=BOUND_S) is False
    config = RewardConfig(timeout_s=BOUND_S, incorrect_reward=-1.0)
    assert math_reward(SLOW_RESPONSE, SLOW_GOLD, config) == -1.0
    assert time.monotonic() - start < 2 * BOUND_S + SLACK_S


def test_previous_alarm_handler_is_restored():
    _warm()
    def handler(signum, frame):
        return None
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        math_reward("<think></think>\\boxed{3}", "3")
        assert signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_pool_keeps_order_and_bounds_each_item(pool):
    responses = ["<think></think>\\boxed{1}", SLOW_RESPONSE, "<think></think>\\boxed{2}", "no box", ""]
    golds = ["1", SLOW_GOLD, "3", "4", "5"]
    config = RewardConfig(timeout_s=BOUND_S, incorrect_reward=-1.0, format_error_reward=-0.5, pool_grace_s=1.0)
    score_responses(["\\boxed{1}"], ["1"], config, num_workers=1)  # worker started and warm
    start = time.monotonic()
    rewards = score_responses(responses, golds, config, num_workers=1)
    assert rewards == [1.0, -1.0, -1.0, -0.5, -0.5]  # no box / empty response: format errors
    assert time.monotonic() - start < BOUND_S + config.pool_grace_s + SLACK_S


def test_thread_callers_are_bounded_through_the_pool(pool):
    results: dict[str, object] = {}

    def work() -> None:
        results["equal"] = is_equivalent("2/4", "1/2")
        results["slow"] = is_equivalent(SLOW_PRED, SLOW_GOLD, timeout_s=BOUND_S)
        results["reward"] = math_reward("<think></think>\\boxed{0.5}", "1/2")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results == {"equal": True, "slow": False, "reward": 1.0}


def test_hung_worker_is_killed_and_replaced(pool):
    config = RewardConfig(timeout_s=BOUND_S, pool_grace_s=0.5, incorrect_reward=-1.0)
    assert score_responses(["\\boxed{7}"], ["7"], config, num_workers=1) == [1.0]
    (pid,) = get_pool().worker_pids()
    os.kill(pid, signal.SIGSTOP)  # a hang no signal timer inside the worker can interrupt
    killed_before = get_pool().killed
    start = time.monotonic()
    assert score_responses(["\\boxed{7}"], ["7"], config, num_workers=1) == [-1.0]
    assert time.monotonic() - start < BOUND_S + config.pool_grace_s + SLACK_S
    assert get_pool().killed == killed_before + 1
    assert get_pool().worker_pids() != [pid]
    assert score_responses(["\\boxed{7}", "\\boxed{8}"], ["7", "7"], config, num_workers=1) == [1.0, -1.0]


def test_crashed_worker_does_not_block(pool):
    config = RewardConfig(timeout_s=BOUND_S, incorrect_reward=-1.0)
    score_responses(["\\boxed{1}"], ["1"], config, num_workers=1)
    (pid,) = get_pool().worker_pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    rewards = score_responses(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "4"], config, num_workers=1)
    assert rewards[0] in (1.0, -1.0)  # the item in flight on the dead worker may be lost, never blocks
    assert rewards[1:] == [1.0, -1.0]


def test_start_method_choice_and_override():
    assert choose_start_method(env={})[0] == "forkserver"
    assert choose_start_method(env={"DEEPSCALER_REWARD_START_METHOD": "spawn"}) == (
        "spawn", "requested by DEEPSCALER_REWARD_START_METHOD")
    assert choose_start_method("spawn", env={})[1] == "requested by argument"
    with pytest.raises(ValueError, match="start method"):
        choose_start_method("threads", env={})


def test_spawn_pool_grades():
    spawn_pool = BoundedPool(1, start_method="spawn")
    try:
        config = RewardConfig()
        tasks = [("<think></think>\\boxed{\\frac12}", "0.5", False), ("\\boxed{3}", "4", False)]
        assert score_in_pool(spawn_pool, tasks, config) == [1.0, 0.0]
    finally:
        spawn_pool.close()


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise ValueError(x)


def test_pool_is_a_generic_bounded_map():
    generic = BoundedPool(1, start_method="spawn")
    try:
        assert generic.map(_square, [1, 2, 3], deadline_s=30.0, fallback=-1) == [1, 4, 9]
        assert generic.map(_fail, [1, 2], deadline_s=30.0, fallback="fallback") == ["fallback", "fallback"]
    finally:
        generic.close()
