"""Each term of the FT-CADIS objective against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cadis.errors import CadisError
from cadis.training.objective import (
    FTCadisLoss,
    class_balance_weights,
    consistency_kl,
    consistency_target,
    correct_draws,
    madv_loss,
    mask_all_correct,
    pgd_denoised,
    selective_ce,
)


def ce(z: list[float], y: int) -> float:
    """Cross-entropy by hand: -z_y + log Σ_k exp(z_k)."""
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


# Image 0 (label 0): draws 0 and 2 are correct, draw 1 is a hallucination.
# Image 1 (label 2): no draw predicts class 2.
LOGITS = [[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]],
          [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.2, 0.5]]]
LABELS = [0, 2]


def test_selection_counts_only_correct_draws():
    logits, y = torch.tensor(LOGITS), torch.tensor(LABELS)
    assert correct_draws(logits, y).tolist() == [[True, False, True], [False, False, False]]
    got = selective_ce(logits, y, warm_start=False)
    assert got[0].item() == pytest.approx((ce(LOGITS[0][0], 0) + ce(LOGITS[0][2], 0)) / 3, rel=1e-6)
    assert got[1].item() == 0.0  # nothing selected, nothing learned without warm start


def test_warm_start_trains_on_the_lowest_ce_draw():
    logits, y = torch.tensor(LOGITS), torch.tensor(LABELS)
    got = selective_ce(logits, y, warm_start=True)
    lowest = min(ce(z, 2) for z in LOGITS[1])  # draw 2: -0.5 + log(e + e^1.2 + e^0.5)
    assert lowest == pytest.approx(ce(LOGITS[1][2], 2))
    assert got[1].item() == pytest.approx(lowest / 3, rel=1e-6)
    # an image with a correct draw is unaffected by warm start
    assert got[0].item() == pytest.approx((ce(LOGITS[0][0], 0) + ce(LOGITS[0][2], 0)) / 3, rel=1e-6)


def test_mask_needs_every_draw_correct():
    logits = torch.tensor([[[1.0, 0.0], [2.0, 1.0]],    # label 0: both correct
                           [[1.0, 0.0], [0.0, 1.0]],    # label 0: one hallucination
                           [[0.0, 1.0], [0.0, 3.0]]])   # label 0: none correct
    assert mask_all_correct(logits, torch.tensor([0, 0, 0])).tolist() == [True, False, False]


def test_consistency_target_and_kl():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]], requires_grad=True)
    p_bar = consistency_target(logits)
    assert p_bar.requires_grad  # the authors' target keeps its gradient
    assert not consistency_target(logits, detach=True).requires_grad  # the ablation's fixed target
    assert p_bar.tolist()[0] == pytest.approx([0.5, 0.5])
    # p̄ with a zero entry (0·log 0 = 0): KL([1/2, 1/2, 0] ‖ [1/4, 1/2, 1/4]) = ½ log 2
    got = consistency_kl(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[[0.0, math.log(2.0), 0.0]]]))
    assert got.item() == pytest.approx(0.5 * math.log(2.0), rel=1e-6)


def test_madv_takes_the_worst_draw_and_the_mask():
    p_bar = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    adv = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [math.log(9.0), 0.0]]] * 2)
    got = madv_loss(p_bar, adv, torch.tensor([True, False]), lam=4.0)
    # KLs: 0, ½ log(4/3), ½ log(25/9); the max is the last
    assert got.tolist() == pytest.approx([4.0 * 0.5 * math.log(25 / 9), 0.0], rel=1e-6)


class Identity(torch.nn.Module):
    """A 'denoiser' returning its input, so x̂_i = x + σ·ε_i is chosen by the test; its parameter
    checks that no gradient reaches the denoiser."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, sigma):
        return x * self.scale


def logit_reader(k: int) -> torch.nn.Module:
    """A classifier whose logits are the image's K pixels (identity weights, trainable)."""
    lin = torch.nn.Linear(k, k, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(k))
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def run_method(method: str, draws: list[list[list[float]]], labels: list[int], **kw):
    """Loss of `method` where draw i of image b has logits draws[b][i] (σ = 1, x = 0, noise = logits)."""
    noise = torch.tensor(draws).unsqueeze(2).unsqueeze(2)  # [B, M, 1, 1, K]
    x = torch.zeros(noise.shape[0], *noise.shape[2:])
    den, clf = Identity(), logit_reader(noise.shape[-1])
    loss_fn = FTCadisLoss(method, sigma=1.0, num_draws=noise.shape[1], **kw)
    loss, metrics = loss_fn(clf, den, x, torch.tensor(labels), noise=noise)
    loss.backward()
    assert den.scale.grad is None
    assert clf[1].weight.grad is not None
    return loss.item(), metrics


# Image 0 (label 0): all three draws correct; image 1 (label 1): one draw of three correct.
DRAWS = [[[math.log(3.0), 0.0], [math.log(9.0), 0.0], [1.0, 0.0]],
         [[0.0, 2.0], [1.0, 0.0], [2.0, 0.0]]]
Y = [0, 1]


def test_denoised_ce_averages_all_draws():
    loss, m = run_method("denoised-ce", DRAWS, Y)
    expected = sum(ce(z, y) for b, y in enumerate(Y) for z in DRAWS[b]) / 6
    assert loss == pytest.approx(expected, rel=1e-6)
    assert m["loss_madv"] == 0.0
    assert m["selection_rate"] == pytest.approx(4 / 6) and m["acc_denoised"] == pytest.approx(4 / 6)
    assert m["mask_rate"] == pytest.approx(0.5)


def test_sce_only_and_ft_cadis():
    sce = [sum(ce(z, 0) for z in DRAWS[0]) / 3, ce(DRAWS[1][0], 1) / 3]
    loss, m = run_method("sce-only", DRAWS, Y)
    assert loss == pytest.approx(sum(sce) / 2, rel=1e-6) and m["loss_madv"] == 0.0
    # With ε = 0 the search stays at the denoised draws, so L_MAdv = λ·max_i KL(p̄ ‖ softmax(z_i)) on image 0.
    q = [softmax(z) for z in DRAWS[0]]
    p_bar = [sum(col) / 3 for col in zip(*q)]
    madv = 4.0 * max(kl(p_bar, qi) for qi in q)
    loss, m = run_method("ft-cadis", DRAWS, Y, lam=4.0, eps=0.0)
    assert m["loss_madv"] == pytest.approx(madv / 2, rel=1e-5)
    assert loss == pytest.approx((sce[0] + sce[1] + madv) / 2, rel=1e-5)
    loss, m = run_method("ce-madv", DRAWS, Y, lam=4.0, eps=0.0)
    all_ce = sum(ce(z, y) for b, y in enumerate(Y) for z in DRAWS[b]) / 6
    assert loss == pytest.approx(all_ce + madv / 2, rel=1e-5)


def test_madv_is_skipped_without_all_correct_draws():
    draws = [[[0.0, 2.0], [1.0, 0.0]]]  # label 0: one hallucination, so no MAdv
    loss, m = run_method("ft-cadis", draws, [0], lam=4.0)
    assert m["mask_rate"] == 0.0 and m["loss_madv"] == 0.0
    assert loss == pytest.approx(ce(draws[0][1], 0) / 2, rel=1e-6)


def linear_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    return model.train()


def test_pgd_steps_by_hand():
    model = linear_model()
    w = model[1].weight.detach()
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    eta0 = 0.1 * torch.randn(2, 3, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    p_bar = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    eps = 0.5

    def grad(v):  # ∂/∂v KL(p̄ ‖ softmax(Wv)) = Wᵀ(softmax(Wv) - p̄)
        return w.T @ ((w @ v).softmax(0) - p_bar[b])

    one = pgd_denoised(model, x, eta0, p_bar, eps=eps, steps=1)
    two = pgd_denoised(model, x, eta0, p_bar, eps=eps, steps=2)
    for b in range(2):
        for i in range(3):
            start = eta0[b, i].flatten()
            # T = 1: a step of 2ε along the normalised gradient, projected back to the sphere of radius ε
            g = grad(x[b].flatten() + start)
            torch.testing.assert_close(one[b, i].flatten(), start + eps * g / g.norm(), rtol=1e-5, atol=1e-6)
            # T = 2: two steps of ε, then the projection shrinks the total move to ε
            e1 = start + eps * g / g.norm()
            g1 = grad(x[b].flatten() + e1)
            d = e1 + eps * g1 / g1.norm() - start
            expected = start + d * min(1.0, eps / d.norm().item())
            torch.testing.assert_close(two[b, i].flatten(), expected, rtol=1e-5, atol=1e-6)


def test_pgd_stays_in_the_ball_and_raises_the_kl():
    model = linear_model(3)
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    eta0 = 0.2 * torch.randn(3, 4, 1, 2, 2, generator=torch.Generator().manual_seed(5))
    p_bar = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    eps = 0.25
    eta = pgd_denoised(model, x, eta0, p_bar, eps=eps, steps=4)
    dist = (eta - eta0).flatten(2).norm(dim=-1)
    assert (dist <= eps * (1 + 1e-5)).all()
    assert (dist > 0.5 * eps).all()  # it did move
    with torch.no_grad():
        before = consistency_kl(p_bar, model((x.unsqueeze(1) + eta0).flatten(0, 1)).view(3, 4, 3))
        after = consistency_kl(p_bar, model((x.unsqueeze(1) + eta).flatten(0, 1)).view(3, 4, 3))
    assert (after > before).all()
    # the classifier is back in train mode, trainable, and got no parameter gradient
    assert model.training and model[1].weight.requires_grad and model[1].weight.grad is None
    assert not eta.requires_grad


def test_madv_gradient_reaches_the_clean_logits_through_p_bar():
    # ∂/∂p̄ KL(p̄ ‖ q) = log p̄ + 1 - log q, then through p̄ = mean_i softmax(z_i): the chain rule by hand
    z = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]], requires_grad=True)  # clean draws, [B=1, M=2, K=3]
    adv = torch.tensor([[[0.0, 1.0, 0.0], [0.2, 0.3, 0.4]]])  # adversarial logits, a constant here
    lam = 2.0
    p_bar = consistency_target(z)
    kl = consistency_kl(p_bar, adv)[0]
    worst = int(kl.argmax())
    madv_loss(p_bar, adv, torch.tensor([True]), lam).sum().backward()
    p = z.detach().softmax(-1)[0]
    dp = lam * (p_bar.detach()[0].log() + 1 - adv[0, worst].log_softmax(-1))  # ∂L/∂p̄
    expected = torch.stack([(torch.diag(p[i]) - torch.outer(p[i], p[i])) @ dp / 2 for i in range(2)])
    torch.testing.assert_close(z.grad[0], expected, rtol=1e-5, atol=1e-6)
    assert z.grad.abs().sum() > 0.01
    # detached: L_MAdv no longer reaches the clean draws
    assert not madv_loss(consistency_target(z, detach=True), adv, torch.tensor([True]), lam).requires_grad


def test_detached_target_changes_the_gradient_not_the_loss():
    model = linear_model(7)
    denoiser = lambda noisy, sigma: noisy  # noqa: E731  an identity "denoiser"
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(8))
    y = model(x).argmax(-1).detach()  # labels the model gets right, so the mask is on
    noise = 0.01 * torch.randn(4, 2, 1, 2, 2, generator=torch.Generator().manual_seed(9))
    grads, losses = [], []
    for detach in (False, True):
        model.zero_grad()
        loss, _ = FTCadisLoss("ft-cadis", sigma=0.1, num_draws=2, lam=4.0, eps=0.2, adv_steps=1,
                              detach_target=detach)(model, denoiser, x, y, noise=noise)
        loss.backward()
        grads.append(model[1].weight.grad.clone())
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert (grads[0] - grads[1]).abs().max() > 1e-4


def test_class_balance_weights_give_each_class_its_share_of_the_batch():
    # class 0: 4 images, all kept; class 1: 4 images, 1 kept; class 2: 2 images, 1 kept -> batch mask rate 0.6
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    w = class_balance_weights(mask, y, cap=100.0)
    torch.testing.assert_close(w, torch.tensor([0.6, 0.6, 0.6, 0.6, 2.4, 0, 0, 0, 1.2, 0]))
    assert w.sum().item() == pytest.approx(mask.sum().item())  # the total weight of L_MAdv is kept
    for c, share in ((0, 0.4), (1, 0.4), (2, 0.2)):  # each class's share of it is its share of the batch
        assert w[y == c].sum().item() / w.sum().item() == pytest.approx(share)
    assert class_balance_weights(mask, y).max().item() == pytest.approx(2.4)  # under the default cap of 4
    assert class_balance_weights(mask, y, cap=2.0).max().item() == 2.0


def test_class_balance_changes_the_adversarial_term_only():
    model = linear_model(7)
    denoiser = lambda noisy, sigma: noisy  # noqa: E731  an identity "denoiser"
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(8))
    noise = 0.01 * torch.randn(6, 2, 1, 2, 2, generator=torch.Generator().manual_seed(9))
    pred = model(x).argmax(-1).detach()
    y = torch.where(torch.arange(6) < 4, pred, (pred + 1) % 3)  # two images outside the mask
    out = {}
    for balance in (False, True):
        loss, metrics = FTCadisLoss("ft-cadis", sigma=0.1, num_draws=2, lam=4.0, eps=0.2, adv_steps=1,
                                    class_balance=balance)(model, denoiser, x, y, noise=noise)
        out[balance] = metrics
    assert out[True]["loss_sce"] == pytest.approx(out[False]["loss_sce"])
    assert out[True]["mask_rate"] == out[False]["mask_rate"] == pytest.approx(4 / 6)
    assert out[True]["loss_madv"] != pytest.approx(out[False]["loss_madv"])


def test_bad_settings_raise():
    with pytest.raises(CadisError, match="Unknown method"):
        FTCadisLoss("ft-cadiss")
    with pytest.raises(CadisError, match="no loss"):
        FTCadisLoss("none")
    with pytest.raises(CadisError, match="sigma"):
        FTCadisLoss("ft-cadis", sigma=0.0)
