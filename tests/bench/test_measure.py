"""Model FLOPs, the clocks and the memory probe of ``dpokit bench``."""

import time

import pytest

from dpokit.bench.measure import PeakMemory, matmul_peak_flops, model_flops, step_clock

# One group: a prompt of 2 tokens, completions of 1 and 2 tokens.
GROUP = ([11, 12], [[21], [31, 32]])
PARAMS, LAYERS, WIDTH, HEAD = 10, 2, 4, 3


def hand_count(with_reference: bool, head_where_needed: bool) -> int:
    # Tokens, each counted once: 2 prompt + 1 + 2 completion = 5; 3 of them are completion tokens.
    # Positions each token attends to: prompt 1 + 2; first completion 2 + 1; second 3 + 4 -> 13.
    attention = 4 * LAYERS * WIDTH * 13  # = 416
    if head_where_needed:
        per_token = 2 * (PARAMS - HEAD) * 5 + 2 * HEAD * 3  # = 70 + 18
    else:
        per_token = 2 * PARAMS * 5  # = 100
    total = 3 * (per_token + attention)  # forward + backward of the policy
    if with_reference:
        total += per_token + attention  # the reference's forward
    return total


@pytest.mark.parametrize("with_reference", [False, True])
@pytest.mark.parametrize("head_where_needed", [False, True])
def test_model_flops_matches_a_hand_count(with_reference, head_where_needed):
    out = model_flops([[GROUP]], PARAMS, LAYERS, WIDTH, with_reference, HEAD, head_where_needed)
    assert out == [float(hand_count(with_reference, head_where_needed))]


def test_model_flops_literal_values():
    assert model_flops([[GROUP]], PARAMS, LAYERS, WIDTH, False) == [1548.0]
    assert model_flops([[GROUP]], PARAMS, LAYERS, WIDTH, True) == [2064.0]
    assert model_flops([[GROUP]], PARAMS, LAYERS, WIDTH, True, HEAD, True) == [2016.0]


def test_model_flops_is_per_step_and_additive_over_groups():
    single = model_flops([[GROUP]], PARAMS, LAYERS, WIDTH, True)[0]
    other = ([5, 6, 7], [[8, 9]])
    other_alone = model_flops([[other]], PARAMS, LAYERS, WIDTH, True)[0]
    out = model_flops([[GROUP], [GROUP, other]], PARAMS, LAYERS, WIDTH, True)
    assert out == [single, single + other_alone]


def test_step_clock_by_name_and_by_spec():
    assert step_clock("cpu") is time.process_time
    assert step_clock("wall") is time.perf_counter
    assert step_clock({"clock": "cpu"}) is time.process_time
    assert step_clock({}) is time.perf_counter


def test_matmul_peak_is_positive_and_finite():
    flops = matmul_peak_flops("cpu", size=64, repeats=2)
    assert 0 < flops < float("inf")


def test_peak_memory_sees_an_allocation():
    import torch

    memory = PeakMemory("cpu")
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    peak = memory.peak_bytes()
    del block
    assert peak >= 48 * 2 ** 20, (peak, memory.method)
