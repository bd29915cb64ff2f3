"""EMA target update: exact lerp in fp32, bf16 online weights, m=1, mismatches, initialisation.

The ZeRO-3 case (partitioned online weights on 2 processes) runs in tests/test_engine_dist.py.
"""

import copy

import pytest
import torch
import torch.nn as nn

from jepa.train.ema import ema_update, init_target


def encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in module.parameters()])


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.996, 0.9999])
def test_one_update_moves_by_one_minus_m(momentum):
    target, online = encoder(0), encoder(1)
    before = flat(target)
    ema_update(target, online, momentum, zero3=False)
    want = before + (1 - momentum) * (flat(online) - before)
    torch.testing.assert_close(flat(target), want, rtol=0, atol=1e-7)


def test_bf16_online_is_cast_up_and_target_stays_fp32():
    target, online = encoder(0), encoder(1).to(torch.bfloat16)
    before = flat(target)
    ema_update(target, online, 0.996, zero3=False)
    assert all(p.dtype == torch.float32 for p in target.parameters())
    want = before + 0.004 * (flat(online) - before)  # flat() casts the bf16 weights up exactly
    torch.testing.assert_close(flat(target), want, rtol=0, atol=1e-7)
    # Increments of 0.4% of the gap are below bf16 resolution; the fp32 target moves wherever
    # online and target differ (LayerNorm's default ones/zeros are equal in both).
    assert torch.equal(flat(target) != before, flat(online) != before)


def test_momentum_one_leaves_target_unchanged():
    target, online = encoder(0), encoder(1)
    before = flat(target)
    ema_update(target, online, 1.0, zero3=False)
    assert torch.equal(flat(target), before)


def test_small_buckets_give_the_same_result():
    target_a, target_b, online = encoder(0), encoder(0), encoder(1)
    ema_update(target_a, online, 0.9, zero3=False)
    ema_update(target_b, online, 0.9, zero3=False, bucket_numel=10)
    assert torch.equal(flat(target_a), flat(target_b))


def test_online_unchanged_and_grads_untouched():
    target, online = encoder(0), encoder(1)
    online(torch.randn(5, 6, generator=torch.Generator().manual_seed(0))).square().sum().backward()
    grads = [p.grad.clone() for p in online.parameters()]
    assert all(g.abs().sum() > 0 for g in grads)  # every online parameter has a real gradient
    weights, target_before = flat(online), flat(target)
    ema_update(target, online, 0.5, zero3=False)
    assert not torch.equal(flat(target), target_before)  # the update did run
    assert torch.equal(flat(online), weights)
    assert all(p.grad is not None and torch.equal(p.grad, g) for p, g in zip(online.parameters(), grads))
    assert all(p.grad is None for p in target.parameters())  # and the target got none


def test_mismatched_modules_are_errors():
    with pytest.raises(ValueError, match="parameter names"):
        ema_update(nn.Linear(6, 16), encoder(1), 0.9, zero3=False)
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(6, 16), nn.Linear(6, 8), 0.9, zero3=False)
    with pytest.raises(ValueError, match="float32"):
        ema_update(encoder(0).to(torch.bfloat16), encoder(1), 0.9, zero3=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(encoder(0), encoder(1), 1.5, zero3=False)


def test_init_target_copies_weights_and_buffers():
    online = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    online[1].running_mean.fill_(0.25)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.data.zero_()
    target[1].running_mean.zero_()
    init_target(target, online.to(torch.bfloat16), zero3=False)
    assert torch.equal(flat(target), flat(online))
    assert torch.all(target[1].running_mean == 0.25)
    assert target[0].weight.dtype == torch.float32
