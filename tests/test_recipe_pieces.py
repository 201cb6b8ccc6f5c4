"""The authors' whole LoRA recipe, piece by piece (LoRA on q and v, weight-decay cosine, per-tensor clipping,
crop + flip), and weight interpolation of two LoRA fine-tunes (ours)."""

from __future__ import annotations

import math

import pytest
import torch

from cadis.errors import CadisError
from cadis.models.classifier import ImageClassifier
from cadis.models.loading import load_adapter, load_classifier, save_classifier
from cadis.models.lora import SplitQKV, interpolate_lora, merged_classifier
from cadis.training.augmentation import random_crop_flip
from cadis.training.finetune import clip_gradients, make_optimizer, prepare_classifier, set_weight_decay
from cadis.training.finetune_config import FinetuneConfig
from cadis.training.recipes import get_recipe
from cadis.training.schedules import cosine


@pytest.fixture(scope="module")
def base(tiny_classifier_dir) -> ImageClassifier:
    return load_classifier(f"local-dir:{tiny_classifier_dir}")


def trained(base: ImageClassifier, seed: int, **kw) -> ImageClassifier:
    """A LoRA copy whose factors and head are moved off their initial values, as after training."""
    clf = prepare_classifier(FinetuneConfig(seed=seed, **kw), base)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 1000 + p.numel())))
    return clf.eval()


X = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_split_qkv_keeps_the_function_and_lora_adapts_q_and_v_only(base, tmp_path):
    clf = trained(base, 1, lora_qv=True)
    names = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert any(".q.lora_A" in n for n in names) and any(".v.lora_B" in n for n in names)
    assert not any(".k.lora" in n or "qkv.lora" in n for n in names)
    fresh = prepare_classifier(FinetuneConfig(lora_qv=True), base).eval()  # B = 0: the base's function
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), base(X), rtol=1e-5, atol=1e-5)
        want = clf(X)
        assert not torch.allclose(want, base(X), atol=1e-3)
        # saved as an adapter, it loads onto the fused base (split on the way) and merges back to a fused qkv
        loaded = load_classifier(str(save_classifier(clf, tmp_path / "qv", "adapter")))
        torch.testing.assert_close(loaded(X), want, rtol=1e-5, atol=1e-5)
        assert not any(isinstance(m, SplitQKV) for m in loaded.modules())
        torch.testing.assert_close(merged_classifier(clf)(X), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qv", [False, True])
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_interpolated_adapter_has_exactly_the_interpolated_weights(base, tmp_path, a, qv):
    first, second = trained(base, 1, lora_qv=qv), trained(base, 2, lora_qv=qv)
    mixed = interpolate_lora(first, second, a)
    w1, w2 = (merged_classifier(c).state_dict() for c in (first, second))
    wm = merged_classifier(mixed).state_dict()
    assert wm.keys() == w1.keys()
    for key in w1:
        torch.testing.assert_close(wm[key], (1 - a) * w1[key] + a * w2[key], rtol=1e-5, atol=1e-6)
    # it saves as a small adapter of rank r1 + r2 and loads back to the same function
    mixed.spec = f"local-dir:{base.spec.removeprefix('local-dir:')}"
    path = save_classifier(mixed, tmp_path / f"mix{a}", "adapter")
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(str(path))(X), mixed(X), rtol=1e-5, atol=1e-5)
    assert load_adapter(path, merge=False).model.peft_config["default"].r == 8


def test_interpolation_refuses_merged_models_and_weights_outside_0_1(base):
    lora = trained(base, 1)
    with pytest.raises(CadisError, match="LoRA"):
        interpolate_lora(lora, merged_classifier(lora), 0.5)
    with pytest.raises(CadisError, match=r"\[0, 1\]"):
        interpolate_lora(lora, lora, 1.5)


def test_weight_decay_follows_the_cosine_and_spares_1d_parameters(base):
    cfg = FinetuneConfig(steps=100, weight_decay=0.01, weight_decay_end=0.1, layer_decay=0.9)
    clf = prepare_classifier(cfg, base)
    opt = make_optimizer(cfg, clf)
    assert cosine(0, 100, 0.01, 0.1) == pytest.approx(0.01) and cosine(100, 100, 0.01, 0.1) == pytest.approx(0.1)
    assert cosine(50, 100, 0.01, 0.1) == pytest.approx(0.055)
    for step, want in ((0, 0.01), (50, 0.055), (100, 0.1)):
        set_weight_decay(cfg, opt, step)
        decays = {round(g["weight_decay"], 9) for g in opt.param_groups}
        assert decays == {0.0, round(want, 9)}
    assert any(g["weight_decay"] == 0.0 for g in opt.param_groups)  # biases and norms: never decayed


def test_layer_decay_scales_the_adapters_by_depth(base):
    cfg = FinetuneConfig(layer_decay=0.9)
    clf = prepare_classifier(cfg, base)
    opt = make_optimizer(cfg, clf)
    scales = {round(g.get("lr_scale", 1.0), 6) for g in opt.param_groups}
    depth = 2  # the tiny ViT: blocks get 0.9^(depth - i) for block i, the head 1
    assert scales == {round(0.9 ** (depth - i), 6) for i in range(depth)} | {1.0}


def test_per_tensor_clipping_bounds_each_tensor_and_global_bounds_the_total():
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]

    def fill():
        for k, p in enumerate(params):
            p.grad = torch.full((3,), float(k + 1))

    fill()
    total = clip_gradients(FinetuneConfig(grad_clip=1.0, clip_per_tensor=True), params)
    assert total.item() == pytest.approx(math.sqrt(3 * (1 + 4 + 9)))
    assert all(p.grad.norm().item() == pytest.approx(1.0, rel=1e-4) for p in params)
    fill()
    clip_gradients(FinetuneConfig(grad_clip=1.0), params)
    assert torch.cat([p.grad for p in params]).norm().item() == pytest.approx(1.0, rel=1e-4)
    assert params[0].grad.norm().item() < 0.3  # the small tensor shrinks with the rest


def test_crop_and_flip_repeat_with_the_generator_and_move_pixels():
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)
    # each output is a shifted (and maybe mirrored) window of its input: the total mass can only drop
    assert (a.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()
    unpadded = random_crop_flip(x, torch.Generator().manual_seed(5), padding=0)  # no room to move: flips only
    flipped = [torch.equal(unpadded[i], x[i].flip(-1)) for i in range(32)]
    assert all(f or torch.equal(unpadded[i], x[i]) for i, f in enumerate(flipped))
    assert 4 < sum(flipped) < 28  # about half, drawn from the generator


def test_the_whole_recipe_sets_every_piece():
    values = get_recipe("authors-lora-whole").finetune_values(60_000)
    assert values["layer_decay"] == 0.9 and values["clip_per_tensor"] and values["augment"] and values["lora_qv"]
    assert (values["weight_decay"], values["weight_decay_end"]) == (0.01, 0.1)
    assert values["eval_offset"] >= 500  # the curve is read on images that are not certified
    FinetuneConfig(**{k: v for k, v in values.items() if k != "evals"}).validate()


def test_a_run_with_every_piece_trains_resumes_identically_and_loads(tiny_denoiser_dir, base, tmp_path):
    from cadis.data import ImageDataset, load_dataset
    from cadis.models.denoiser import DiffusionDenoiser
    from cadis.training.finetune import finetune

    test = load_dataset("fashion-mnist", "test")
    train = ImageDataset(test.images[:32], test.labels[:32], test.classes)
    held = ImageDataset(test.images[32:64], test.labels[32:64], test.classes)
    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    values = {k: v for k, v in get_recipe("authors-lora-whole").finetune_values(32).items() if k != "evals"}
    values.update(steps=6, batch_size=16, warmup=1, eval_size=16, eval_offset=8, lr=0.01, checkpoint_minutes=0.0)
    once = finetune(FinetuneConfig(out=str(tmp_path / "once"), sigma=0.5, **values), denoiser, base, train, held)
    stop = __import__("threading").Event()
    stop.set()  # stops after the first step; the rerun resumes from that checkpoint
    cfg = FinetuneConfig(out=str(tmp_path / "twice"), sigma=0.5, **values)
    assert finetune(cfg, denoiser, base, train, held, stop_event=stop).stopped
    twice = finetune(cfg, denoiser, base, train, held)
    a, b = load_classifier(str(once.path)), load_classifier(str(twice.path))
    with torch.no_grad():
        assert torch.equal(a(X), b(X))
        assert not torch.allclose(a(X), base(X), atol=1e-4)
    metrics = (tmp_path / "once" / "metrics.jsonl").read_text()
    assert '"mask_rate_c6"' in metrics
