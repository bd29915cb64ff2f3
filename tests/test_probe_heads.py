"""Probe trainers on frozen features: linear heads, kNN, attentive probe, held-out split.

Synthetic features with a known answer: well separated class means (a linear probe and kNN must
score ~1), the same features with labels shuffled (they must score chance), and tokens whose mean
carries no label (only an attentive probe can read it).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from jepa.eval.attentive import attentive_probe
from jepa.eval.knn import knn_predict, knn_probe
from jepa.eval.linear import linear_probe, train_linear_heads
from jepa.eval.holdout import choose_head, holdout_split
from jepa.seeding import derive_seed

C = 4
N_VAL = 400
CHANCE = 1 / C
# A probe that knows nothing predicts val labels that are independent of its predictions: its hits
# are (at most as spread as) Binomial(N_VAL, 1/C), std sqrt(p(1-p)/n) = 0.0217; 5 std = 0.108.
CHANCE_TOL = 5 * math.sqrt(CHANCE * (1 - CHANCE) / N_VAL)
LINEAR = dict(lrs=(0.01, 0.1, 1.0), weight_decays=(0.0, 1e-3), epochs=8, batch_size=64,
              holdout_fraction=0.2, seed=0)


def balanced_labels(n: int, g: torch.Generator) -> torch.Tensor:
    return (torch.arange(n) % C)[torch.randperm(n, generator=g)]


def blobs(*, n_train: int = 400, dim: int = 16, separation: float = 3.0, seed: int = 0):
    """Gaussian classes around random means: (train_x, train_y, val_x, val_y)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(C, dim, generator=g) * separation

    def draw(n):
        y = balanced_labels(n, g)
        return means[y] + torch.randn(n, dim, generator=g), y

    return (*draw(n_train), *draw(N_VAL))


def shuffled(y: torch.Tensor, seed: int) -> torch.Tensor:
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# ---- held-out split ---------------------------------------------------------------------------

def test_holdout_split_is_stratified_disjoint_covering_and_seeded():
    # class sizes 10, 5, 2, 1, 0, 3 -> held out round(0.25 * n), at least 1, never all
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2 + [3] + [5] * 3)
    labels = shuffled(labels, 1)
    train, held = holdout_split(labels, fraction=0.25, seed=7)
    assert torch.bincount(labels[held], minlength=6).tolist() == [2, 1, 1, 0, 0, 1]
    assert torch.bincount(labels[train], minlength=6).tolist() == [8, 4, 1, 1, 0, 2]
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(held, held.sort().values)
    again = holdout_split(labels, fraction=0.25, seed=7)
    assert torch.equal(again[0], train) and torch.equal(again[1], held)
    assert not torch.equal(holdout_split(labels, fraction=0.25, seed=8)[1], held)


def test_holdout_split_exact_fraction_per_class():
    labels = shuffled(torch.arange(1000) % 10, 0)
    train, held = holdout_split(labels, fraction=0.2, seed=0)
    assert torch.bincount(labels[held]).tolist() == [20] * 10
    assert len(train) == 800


# ---- linear heads and kNN on features with a known answer --------------------------------------

def test_linear_and_knn_learn_separable_classes():
    train_x, train_y, val_x, val_y = blobs()
    linear = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **LINEAR)
    assert linear.val_top1 >= 0.95
    assert linear.top5_k == C and linear.val_top5 == 1.0  # fewer than 5 classes: top-5 = top-C
    assert (linear.num_train, linear.num_holdout, linear.num_val) == (320, 80, N_VAL)
    assert [(h.lr, h.weight_decay) for h in linear.heads] == [(lr, wd) for lr in LINEAR["lrs"]
                                                              for wd in LINEAR["weight_decays"]]
    as_json = json.loads(json.dumps(linear.to_dict()))
    assert as_json["chosen"] == linear.chosen and as_json["val_top1"] == linear.val_top1
    assert len(as_json["heads"]) == 6 and as_json["lr_scale"] == 64 / 256

    knn = knn_probe(train_x, train_y, val_x, val_y, num_classes=C)
    assert [e.k for e in knn.entries] == [10, 20, 100, 200]
    assert all(e.top1 >= 0.95 for e in knn.entries), knn
    assert json.loads(json.dumps(knn.to_dict()))["entries"][0]["top1"] == knn.entries[0].top1


def test_shuffled_labels_give_chance():
    # Shuffle val labels too: with val labels still tied to the clusters, a probe that maps each
    # cluster to a random class would score 0, 1/4, 1/2... by the luck of C draws, not of N_VAL.
    train_x, train_y, val_x, val_y = blobs()
    train_y, val_y = shuffled(train_y, 1), shuffled(val_y, 2)
    linear = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **LINEAR)
    assert abs(linear.val_top1 - CHANCE) < CHANCE_TOL, linear.val_top1
    knn = knn_probe(train_x, train_y, val_x, val_y, num_classes=C)
    for entry in knn.entries:
        assert abs(entry.top1 - CHANCE) < CHANCE_TOL, entry


# ---- head selection --------------------------------------------------------------------------

def test_head_is_chosen_on_holdout_and_never_on_val():
    # Overlapping classes, so that heads differ in accuracy.
    train_x, train_y, val_x, val_y = blobs(separation=0.5, seed=3)
    grid = dict(LINEAR, lrs=(1e-3, 0.03, 1.0, 30.0), weight_decays=(0.0, 0.1), epochs=3)
    base = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **grid)
    other = linear_probe(train_x, train_y, val_x, shuffled(val_y, 5), num_classes=C, **grid)
    holdout = [(h.holdout_top1, h.holdout_top5) for h in base.heads]
    assert len(set(h[0] for h in holdout)) > 2, "the heads must differ for the choice to mean anything"
    assert base.chosen == choose_head([h.holdout_top1 for h in base.heads])
    assert other.chosen == base.chosen
    assert [(h.holdout_top1, h.holdout_top5) for h in other.heads] == holdout
    assert [h.val_top1 for h in other.heads] != [h.val_top1 for h in base.heads]
    # Here the held-out choice is not the val-best head: a probe that looked at val would have
    # picked another one (and reported a higher, biased, figure).
    assert max(h.val_top1 for h in base.heads) > base.val_top1


def test_ties_go_to_the_first_head():
    assert choose_head([0.5, 0.9, 0.9, 0.1]) == 1
    train_x, train_y, val_x, val_y = blobs(separation=0.5, seed=3)
    result = linear_probe(train_x, train_y, val_x, val_y, num_classes=C,
                          **dict(LINEAR, lrs=(0.1, 0.1), weight_decays=(0.0,)))
    assert result.heads[0] == result.heads[1] and result.chosen == 0


# ---- batched heads = heads trained alone = torch.optim.SGD -----------------------------------

def test_batched_heads_equal_heads_trained_alone():
    train_x, train_y, val_x, val_y = blobs(separation=1.0)
    lrs, wds = (0.05, 0.5, 2.0), (0.0, 1e-3, 0.05)
    kw = dict(num_classes=C, epochs=3, batch_size=48, seed=4)
    together = train_linear_heads(train_x, train_y, lrs=lrs, weight_decays=wds, **kw)
    for h, (lr, wd) in enumerate(zip(lrs, wds)):
        alone = train_linear_heads(train_x, train_y, lrs=[lr], weight_decays=[wd], **kw)
        torch.testing.assert_close(together.weight[h], alone.weight[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together.bias[h], alone.bias[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together.weight[0], together.weight[1], rtol=0.1)

    probe = dict(LINEAR, weight_decays=(1e-3,))
    grid = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **probe)
    for h, lr in enumerate(probe["lrs"]):
        single = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **dict(probe, lrs=(lr,)))
        assert single.heads[0] == grid.heads[h]


def test_one_head_equals_torch_sgd():
    """The hand-written update is SGD(momentum=0.9), L2 decay on the weight only, cosine lr to 0."""
    x, y, _, _ = blobs(n_train=100, separation=1.0)
    lr, wd, epochs, batch, seed = 0.3, 0.01, 4, 32, 9
    heads = train_linear_heads(x, y, num_classes=C, lrs=[lr], weight_decays=[wd], epochs=epochs,
                               batch_size=batch, seed=seed)

    w = torch.zeros(x.shape[1], C, requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
                          lr=lr, momentum=0.9)
    total = epochs * math.ceil(len(x) / batch)
    g = torch.Generator().manual_seed(derive_seed(seed, purpose="probe-order"))
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            F.cross_entropy(x[idx] @ w + b, y[idx]).backward()
            opt.step()
            step += 1
    torch.testing.assert_close(heads.weight[0], w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(heads.bias[0], b.detach(), rtol=1e-5, atol=1e-6)


def test_standardisation_makes_the_lr_grid_scale_free():
    train_x, train_y, val_x, val_y = blobs(separation=1.0)
    plain = linear_probe(train_x, train_y, val_x, val_y, num_classes=C, **LINEAR)
    # Features 1000x larger and offset: unstandardised, lr 1.0 would diverge.
    scaled = linear_probe(train_x * 1e3 + 50, train_y, val_x * 1e3 + 50, val_y, num_classes=C, **LINEAR)
    for a, b in zip(plain.heads, scaled.heads):
        assert abs(a.val_top1 - b.val_top1) <= 1 / N_VAL and abs(a.holdout_top1 - b.holdout_top1) <= 1 / 80
    assert scaled.val_top1 > 0.8


# ---- kNN -------------------------------------------------------------------------------------

def test_knn_votes_weighted_by_temperature_by_hand():
    # Query along x. One class-0 point 0.1 rad away, two class-1 points 0.6 rad away, one class-2
    # point opposite. Lengths differ on purpose: only the angle may count.
    angle = torch.tensor([0.1, 0.6, -0.6, math.pi])
    train = torch.stack([angle.cos(), angle.sin()], 1) * torch.tensor([[2.0], [0.5], [1.0], [3.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    query, query_y = torch.tensor([[4.0, 0.0]]), torch.tensor([0])
    near, far = math.cos(0.1), math.cos(0.6)

    scores = knn_predict(train, train_y, query, num_classes=3, k=3, temperature=0.07)
    expected = torch.tensor([[math.exp(near / 0.07), 2 * math.exp(far / 0.07), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)
    # T = 0.07: the one near neighbour outvotes the two far ones (exp(2.43) > 2); at T = 10 the
    # votes are nearly equal and with k = 3 the majority wins, while k = 1 still sees only class 0.
    assert knn_probe(train, train_y, query, query_y, num_classes=3, ks=(3,)).entries[0].top1 == 1.0
    flat = knn_probe(train, train_y, query, query_y, num_classes=3, ks=(1, 3), temperature=10.0)
    assert [e.top1 for e in flat.entries] == [1.0, 0.0]
    # k = 4 adds the opposite point's vote exp(-1 / T) to class 2.
    scores4 = knn_predict(train, train_y, query, num_classes=3, k=4, temperature=0.07)
    assert scores4[0, 2].item() == pytest.approx(math.exp(-1 / 0.07), rel=1e-4)


def test_knn_caps_k_at_the_training_set():
    train_x, train_y, val_x, val_y = blobs(n_train=10, separation=1.0)
    result = knn_probe(train_x, train_y, val_x, val_y, num_classes=C, ks=(3, 10, 50))
    assert [(e.k, e.k_used) for e in result.entries] == [(3, 3), (10, 10), (50, 10)]
    assert result.entries[2].top1 == result.entries[1].top1
    torch.testing.assert_close(knn_predict(train_x, train_y, val_x, num_classes=C, k=50),
                               knn_predict(train_x, train_y, val_x, num_classes=C, k=10), rtol=0, atol=0)


def test_knn_chunked_equals_unchunked():
    train_x, train_y, val_x, val_y = blobs(separation=0.5)
    chunked = knn_probe(train_x, train_y, val_x, val_y, num_classes=C, chunk_size=7)
    whole = knn_probe(train_x, train_y, val_x, val_y, num_classes=C, chunk_size=10_000)
    assert chunked == whole
    assert 0.4 < whole.entries[0].top1 < 0.95  # overlapping classes: not a trivial all-correct case
    torch.testing.assert_close(knn_predict(train_x, train_y, val_x, num_classes=C, k=20, chunk_size=7),
                               knn_predict(train_x, train_y, val_x, num_classes=C, k=20), rtol=1e-6, atol=0)


# ---- attentive probe -------------------------------------------------------------------------

def object_tokens(n: int, g: torch.Generator, *, position: torch.Tensor, obj: torch.Tensor):
    """Each sample: T tokens = position code + noise; the label is the position of the one token
    that also carries the object vector. Every sample adds obj once, so the mean over tokens is
    position.mean(0) + obj / T + noise: the same for every class."""
    y = balanced_labels(n, g)
    tokens = position.expand(n, -1, -1) + 0.3 * torch.randn(n, *position.shape, generator=g)
    tokens[torch.arange(n), y] += obj
    return tokens, y


def test_attentive_probe_reads_what_mean_pooling_loses():
    g = torch.Generator().manual_seed(0)
    dim = 16
    position, obj = torch.randn(C, dim, generator=g), 2 * torch.randn(dim, generator=g)  # T = C tokens
    train_t, train_y = object_tokens(400, g, position=position, obj=obj)
    val_t, val_y = object_tokens(N_VAL, g, position=position, obj=obj)

    attentive = attentive_probe(train_t, train_y, val_t, val_y, num_classes=C, lrs=(1e-3, 1e-2), epochs=15,
                                batch_size=32, holdout_fraction=0.2, seed=0, num_heads=2)
    assert attentive.val_top1 >= 0.9, attentive
    assert json.loads(json.dumps(attentive.to_dict()))["num_heads"] == 2

    pooled = linear_probe(train_t.mean(1), train_y, val_t.mean(1), val_y, num_classes=C, **LINEAR)
    assert abs(pooled.val_top1 - CHANCE) < CHANCE_TOL, pooled.val_top1
