"""FT-CADIS fine-tuning on tiny models: LoRA counts, saving, a short run, resuming, DDP and the CLI."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cadis.cli.finetune import add_parser as add_cli
from cadis.cli.finetune import run as run_cli
from cadis.data import ImageDataset, load_dataset
from cadis.distributed import wrap_distributed
from cadis.errors import CadisError
from cadis.models.denoiser import DiffusionDenoiser
from cadis.models.loading import load_classifier, save_classifier
from cadis.models.lora import apply_lora, trainable_parameters
from cadis.training.checkpoint import weights_digest
from cadis.training.finetune import FinetuneConfig, batch_loss, finetune, prepare_classifier
from cadis.training.objective import FTCadisLoss, correct_draws, denoise_draws, draw_noise


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lora_and_head_params(embed: int, depth: int, classes: int, r: int) -> int:
    """LoRA on each block's qkv (embed -> 3·embed): A is r×embed, B is 3·embed×r; the head is a full Linear."""
    return depth * r * (embed + 3 * embed) + embed * classes + classes


def test_lora_trainable_fraction(tiny_classifier_dir):
    clf = load_classifier(str(tiny_classifier_dir))
    base_total = sum(p.numel() for p in clf.parameters())
    apply_lora(clf, r=4, alpha=4)
    expected = lora_and_head_params(embed=16, depth=2, classes=10, r=4)
    assert expected == 2 * 4 * 64 + 170 == 682
    # peft's total counts the frozen original head next to its trained copy
    assert trainable_parameters(clf) == (expected, base_total + expected)
    names = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "head.modules_to_save" in n for n in names)


def test_lora_fraction_on_the_embedded_vit():
    from cadis.models.classifier import ImageClassifier
    from experiments.zoo.architectures import fmnist_vit

    clf = ImageClassifier(fmnist_vit(10), (1, 28, 28), (0.286,), (0.353,)).requires_grad_(False)
    base_total = sum(p.numel() for p in clf.parameters())
    apply_lora(clf)
    trained, total = trainable_parameters(clf)
    assert trained == lora_and_head_params(embed=128, depth=6, classes=10, r=4) == 13578
    assert total == base_total + trained
    assert 0.01 < trained / total < 0.05


@pytest.fixture(scope="module")
def models(tiny_denoiser_dir, tiny_classifier_dir):
    return DiffusionDenoiser.from_pretrained(tiny_denoiser_dir), load_classifier(str(tiny_classifier_dir))


@pytest.fixture(scope="module")
def data():
    test = load_dataset("fashion-mnist", "test")
    return (ImageDataset(test.images[:64], test.labels[:64], test.classes),
            ImageDataset(test.images[64:128], test.labels[64:128], test.classes))


def test_adapter_and_merged_saves_give_the_same_logits(models, tmp_path):
    _, base = models
    clf = prepare_classifier(FinetuneConfig(), base)
    with torch.no_grad():  # make LoRA and the head non-trivial, as after training
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, untouched = clf.eval()(x), base(x)
        assert not torch.allclose(want, untouched, atol=1e-3)
        for fmt in ("adapter", "merged"):
            loaded = load_classifier(str(save_classifier(clf, tmp_path / fmt, fmt)))
            torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
            assert loaded.classes == base.classes
            assert loaded.mean.flatten().tolist() == base.mean.flatten().tolist()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    with pytest.raises(CadisError, match="merged"):
        FinetuneConfig(lora=False, save_as="adapter").validate()


def config(out, **kw) -> FinetuneConfig:
    values = dict(out=str(out), method="ft-cadis", sigma=0.25, steps=24, batch_size=16, lr=0.05, warmup=2,
                  save_as="merged", eval_every=8, eval_size=32, checkpoint_minutes=0.0, seed=3)
    return FinetuneConfig(**{**values, **kw})


def run(cfg, models, data, **kw):
    events = []
    path = finetune(cfg, *models, *data, callback=events.append, **kw).path
    return path, events


@pytest.fixture(scope="module")
def uninterrupted(models, data, tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("run") / "out")
    return cfg, *run(cfg, models, data)


def fixed_batch_metrics(classifier, models, data) -> dict[str, float]:
    train, _ = data
    with torch.no_grad():
        return FTCadisLoss("sce-only")(classifier, models[0], train.images, train.labels,
                                       generator=torch.Generator().manual_seed(7))[1]


def test_short_run_lowers_sce(uninterrupted, models, data):
    cfg, path, events = uninterrupted
    before = fixed_batch_metrics(models[1], models, data)
    after = fixed_batch_metrics(load_classifier(str(path)), models, data)
    assert after["loss_sce"] < before["loss_sce"] - 0.02
    assert after["acc_denoised"] > before["acc_denoised"]


def test_events_and_metric_files(uninterrupted):
    cfg, path, events = uninterrupted
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert [e["step"] for e in steps] == list(range(1, 25))
    assert [e["step"] for e in evals] == [8, 16, 24]
    assert events[-1] == {"kind": "done", "step": 24, "path": str(path)}
    keys = {"loss", "loss_sce", "loss_madv", "selection_rate", "mask_rate", "acc_denoised", "lr", "images_per_s"}
    assert keys <= set(steps[0])
    assert all(0 <= e["test_acc_denoised"] <= 1 for e in evals)
    out = path.parent
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == [e["kind"] for e in events[:-1]]
    assert len((out / "metrics.csv").read_text().splitlines()) == len(rows) + 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["lr"] == cfg.lr and saved["trainable_params"] == 682
    assert steps[0]["lr"] == pytest.approx(cfg.lr / cfg.warmup)  # warmup, step 0


def test_resume_matches_an_uninterrupted_run(uninterrupted, models, data, tmp_path):
    cfg, path, events = uninterrupted
    stop = threading.Event()
    resumed_cfg = config(tmp_path / "out")
    first_events = []

    def stop_at_10(event):
        first_events.append(event)
        if event["kind"] == "step" and event["step"] == 10:
            stop.set()

    result = finetune(resumed_cfg, *models, *data, callback=stop_at_10, stop_event=stop)
    assert result.stopped and result.step == 10
    stopped = result.path
    assert first_events[-1] == {"kind": "stopped", "step": 10, "path": str(stopped)}
    assert json.loads((stopped / "state.json").read_text())["step"] == 10
    # a crash after step 12 logged rows the resumed run must replace
    with (tmp_path / "out" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "step", "step": 12, "loss": -1.0}) + "\n")
    final, second = run(resumed_cfg, models, data)
    assert second[0]["step"] == 11
    want = load_file(path / "model.safetensors")
    got = load_file(final / "model.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)

    def losses(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["kind"], r["step"], r.get("loss"), r.get("test_acc_denoised")) for r in rows]

    assert losses(tmp_path / "out") == losses(path.parent)


def test_config_mismatch_is_refused(uninterrupted, models, data):
    cfg, path, _ = uninterrupted
    with pytest.raises(CadisError, match="lr"):
        finetune(config(cfg.out, lr=0.01), *models, *data)


def test_a_run_saved_before_a_setting_existed_resumes_while_it_stays_at_its_default(tmp_path):
    from dataclasses import asdict

    from cadis.training.run_dir import check_out_dir

    now = asdict(config(tmp_path))
    older = {k: v for k, v in now.items() if k != "madv_class_balance"}  # written by a version without it
    (tmp_path / "config.json").write_text(json.dumps({"config": older, "classifier": "c", "base_weights": "w"}))
    meta = {"config": now, "classifier": "c", "base_weights": "w"}
    check_out_dir(tmp_path, meta, None)  # the new setting at its default: the same run
    with pytest.raises(CadisError, match=r"differs in: madv_class_balance\)"):
        check_out_dir(tmp_path, {**meta, "config": {**now, "madv_class_balance": True}}, None)
    with pytest.raises(CadisError, match=r"differs in: lr\)"):
        check_out_dir(tmp_path, {**meta, "config": {**now, "lr": 0.01}}, None)


def test_a_run_resumes_from_another_checkout_of_the_same_weights(tmp_path):
    from dataclasses import asdict

    from cadis.training.run_dir import check_out_dir

    now = asdict(config(tmp_path))
    spec = "local-dir:/elsewhere/src/cadis/assets/fmnist-vit"
    (tmp_path / "config.json").write_text(json.dumps({"config": now, "classifier": spec, "base_weights": "w"}))
    here = {"config": now, "classifier": "local-dir:/work/main/src/cadis/assets/fmnist-vit", "base_weights": "w"}
    check_out_dir(tmp_path, here, None)  # same weights, same model name: another checkout of the same run
    for other in ({**here, "base_weights": "v"}, {**here, "classifier": "local-dir:/work/main/src/cadis/assets/vit2"}):
        with pytest.raises(CadisError):
            check_out_dir(tmp_path, other, None)


def test_a_retrained_base_classifier_is_refused(uninterrupted, models, data):
    cfg, path, _ = uninterrupted
    denoiser, classifier = models
    retrained = copy.deepcopy(classifier)  # same spec, other weights
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    assert weights_digest(retrained) != weights_digest(classifier) == weights_digest(copy.deepcopy(classifier))
    with pytest.raises(CadisError, match="other weights"):
        finetune(cfg, denoiser, retrained, *data)


def test_method_none_evaluates_and_saves_the_classifier_unchanged(models, data, tmp_path):
    path, events = run(config(tmp_path / "none", method="none", save_as="adapter"), models, data)
    assert [(e["kind"], e["step"]) for e in events] == [("eval", 0), ("done", 0)]
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_classifier(str(path))(x), models[1](x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- two processes


def ddp_batch(models, data):
    """8 images whose rank-0 half holds an image with every draw correct and whose rank-1 half holds none,
    so the ranks also run different numbers of forward passes."""
    den, clf = models
    x, y = data[0].images, data[0].labels
    noise = draw_noise(x, 4, torch.Generator().manual_seed(11))
    with torch.no_grad():
        mask = correct_draws(clf(denoise_draws(den, x, noise, 0.25).flatten(0, 1)).view(64, 4, -1), y).all(1)
    kept, rest = mask.nonzero().flatten(), (~mask).nonzero().flatten()
    assert len(kept) >= 1 and len(rest) >= 7
    idx = torch.cat([kept[:1], rest[:7]])
    return x[idx], y[idx], noise[idx]


def ddp_worker(rank: int, world: int, port: int, tmp: str, den_dir: str, clf_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        den = DiffusionDenoiser.from_pretrained(den_dir)
        clf = load_classifier(clf_dir)
        batch = load_file(os.path.join(tmp, "batch.safetensors"))
        cfg = config(os.path.join(tmp, "ddp"), steps=3, batch_size=8, eval_every=0, eval_size=16)
        model = wrap_distributed(prepare_classifier(cfg, clf), torch.device("cpu")).train()
        loss, metrics = batch_loss(cfg.loss(), model, den, batch["x"], batch["y"], batch["noise"])
        loss.backward()
        grads = {n: p.grad.contiguous() for n, p in model.module.named_parameters() if p.requires_grad}
        grads["mask_rate"] = torch.tensor(metrics["mask_rate"])
        grads["local_loss"] = loss.detach()
        save_file(grads, os.path.join(tmp, f"grads{rank}.safetensors"))
        data = load_dataset("fashion-mnist", "test")
        train = ImageDataset(data.images[:64], data.labels[:64], data.classes)
        test = ImageDataset(data.images[64:128], data.labels[64:128], data.classes)
        finetune(cfg, den, clf, train, test)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(models, data, tmp_path, tiny_denoiser_dir, tiny_classifier_dir):
    from conftest import free_port

    x, y, noise = ddp_batch(models, data)
    save_file({"x": x, "y": y, "noise": noise}, tmp_path / "batch.safetensors")
    # spawn, not fork: earlier tests may have started autograd's threads in this process, which a forked
    # child cannot use
    mp.start_processes(ddp_worker, nprocs=2, start_method="spawn",
                       args=(2, free_port(), str(tmp_path), str(tiny_denoiser_dir), str(tiny_classifier_dir)))
    # one process, the whole batch
    cfg = config(tmp_path / "single", steps=3, batch_size=8, eval_every=0, eval_size=16)
    clf = prepare_classifier(cfg, models[1]).train()
    loss, metrics = batch_loss(cfg.loss(), clf, models[0], x, y, noise)
    loss.backward()
    assert metrics["mask_rate"] == 1 / 8 and metrics["loss_madv"] > 0
    want = {n: p.grad for n, p in clf.named_parameters() if p.requires_grad}
    with torch.no_grad():
        halves = [cfg.loss()(clf, models[0], x[s], y[s], noise[s])[0].item() for s in (slice(0, 4), slice(4, 8))]
    for rank in range(2):
        got = load_file(tmp_path / f"grads{rank}.safetensors")
        assert got.pop("local_loss").item() == pytest.approx(halves[rank], rel=1e-5)  # each rank took its half
        assert got.pop("mask_rate").item() == pytest.approx(1 / 8)  # metrics are averaged over ranks
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    # the two-process training run agrees with a one-process one
    single = finetune(cfg, *models, *data).path.parent
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (tmp_path / "ddp", single)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3, 3]
    for a, b in zip(*rows):
        for k in ("loss", "loss_sce", "selection_rate", "test_acc_denoised"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6)
    assert load_classifier(str(tmp_path / "ddp" / "model")).classes == models[1].classes


def test_cli_finetunes_and_saves_an_adapter(tmp_path, tiny_denoiser_dir, tiny_classifier_dir, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--denoiser", str(tiny_denoiser_dir), "--classifier",
                              str(tiny_classifier_dir), "--method", "sce-only", "--steps", "2", "--batch-size", "8",
                              "--subset", "16", "--eval-size", "8", "--out", str(tmp_path / "cli")])
    run_cli(args)
    assert f"saved {tmp_path / 'cli' / 'model'}" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model" / "adapter_config.json").is_file()
    loaded = load_classifier(str(tmp_path / "cli" / "model"))
    assert loaded(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(CadisError, match="--preset or both"):
        run_cli(parser.parse_args(["finetune", "--denoiser", str(tiny_denoiser_dir)]))


# ---------------------------------------------------------------- validation at the door

BAD_SETTINGS = [
    ("sigma", float("nan")), ("sigma", 0.0), ("sigma", float("inf")), ("lr", float("nan")), ("lr", float("inf")),
    ("lr", 0.0), ("lr", -1e-3), ("lr", 1e39), ("weight_decay", 1e30), ("eps", float("nan")), ("eps", -0.1),
    ("weight_decay", float("nan")),
    ("weight_decay", -0.01), ("lam", float("inf")), ("lam", -1.0), ("lora_r", 0), ("lora_r", 2.5),
    ("lora_alpha", 0.0), ("lora_alpha", float("nan")), ("num_draws", 0), ("adv_steps", -1), ("steps", -1),
    ("steps", 10**7), ("batch_size", 0), ("batch_size", True), ("warmup", -5), ("min_lr", float("nan")),
    ("min_lr", 1.0), ("min_lr", -1e-4), ("grad_clip", float("nan")), ("grad_clip", -1.0), ("layer_decay", 0.0),
    ("layer_decay", 1.5), ("layer_decay", float("nan")), ("subset", 4), ("seed", -1), ("seed", 2**40),
    ("checkpoint_minutes", float("nan")), ("checkpoint_minutes", -1.0), ("eval_every", -1), ("eval_size", -1),
    ("sigma", "0.25"),
]


@pytest.mark.parametrize("field,value", BAD_SETTINGS, ids=[f"{f}={v!r}" for f, v in BAD_SETTINGS])
def test_every_bad_setting_is_refused_before_anything_is_written(field, value, models, data, tmp_path):
    cfg = config(tmp_path / "out", **{field: value})
    flag = "--" + field.replace("_", "-")
    with pytest.raises(CadisError, match=flag) as e:
        cfg.validate()
    assert "\n" not in str(e.value) and "(got " in str(e.value)
    with pytest.raises(CadisError, match=flag):
        finetune(cfg, *models, *data)
    assert not (tmp_path / "out").exists()


def test_good_edges_pass_validation(tmp_path):
    for kw in ({"eps": 0.0, "lam": 0.0, "adv_steps": 0}, {"min_lr": 0.05}, {"grad_clip": None},
               {"grad_clip": 0.0}, {"layer_decay": 1.0}, {"subset": 16}, {"steps": 0}, {"eval_every": 0},
               {"eval_size": 0}, {"lora": False, "lora_r": 0, "save_as": "merged"}):
        config(tmp_path, **kw).validate()


def test_sigma_beyond_the_schedule_bad_labels_and_bad_shapes_are_refused_before_writing(models, data, tmp_path):
    den, clf = models
    train, test = data
    out = tmp_path / "out"
    with pytest.raises(CadisError, match="beyond this scheduler"):
        finetune(config(out, sigma=100.0), den, clf, train, test)
    wrong_labels = ImageDataset(train.images, train.labels + 5, train.classes)
    with pytest.raises(CadisError, match="label 14 but the classifier has 10 classes"):
        finetune(config(out), den, clf, wrong_labels, test)
    rgb = train.fit((3, 32, 32))
    with pytest.raises(CadisError, match="3×32×32 but the denoiser takes 1×28×28"):
        finetune(config(out), den, clf, rgb, test)
    (tmp_path / "file").write_text("")
    with pytest.raises(CadisError, match="is a file"):
        finetune(config(tmp_path / "file"), den, clf, train, test)
    with pytest.raises(CadisError, match="which is a file"):
        finetune(config(tmp_path / "file" / "out"), den, clf, train, test)
    assert not out.exists()


# ---------------------------------------------------------------- non-finite training stops, the last checkpoint stays


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(what, models, data, tmp_path,
                                                                            monkeypatch):
    import cadis.training.finetune as ft

    calls = {"n": 0}
    real = ft.batch_loss

    def poisoned(*args):
        loss, metrics = real(*args)
        calls["n"] += 1
        if calls["n"] == 5:  # step 5
            if what == "loss":
                loss, metrics = loss * float("nan"), {**metrics, "loss": float("nan")}
            else:
                loss = _NaNGradient.apply(loss)
        return loss, metrics

    monkeypatch.setattr(ft, "batch_loss", poisoned)
    cfg = config(tmp_path / "out", steps=8, eval_every=0)
    with pytest.raises(CadisError, match=rf"stopped at step 5: the {what} is not finite.*checkpoint \(step 4\).*kept"):
        finetune(cfg, *models, *data)
    ckpt = tmp_path / "out" / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "trained.safetensors").values())
    assert not (tmp_path / "out" / "model").exists()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_weights_made_non_finite_by_the_update_are_never_saved(models, data, tmp_path, monkeypatch):
    import cadis.training.finetune as ft

    real = ft.make_optimizer

    def overflowing(cfg, clf):
        opt = real(cfg, clf)

        def overflow_at_step_3(optimizer, args, kwargs):
            param = optimizer.param_groups[0]["params"][0]
            if optimizer.state[param]["step"] == 3:
                with torch.no_grad():
                    param.view(-1)[0] = float("inf")
        opt.register_step_post_hook(overflow_at_step_3)
        return opt

    monkeypatch.setattr(ft, "make_optimizer", overflowing)
    with pytest.raises(CadisError, match=r"stopped at step 3: the norm of the updated weights.*\(step 2\)"):
        finetune(config(tmp_path / "out", steps=5, eval_every=0), *models, *data)
    assert json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "out" / "model").exists()


# ---------------------------------------------------------------- crash windows of every file a resume reads


def _stop_at(step: int):
    stop = threading.Event()

    def callback(event):
        if event["kind"] == "step" and event["step"] == step:
            stop.set()
    return stop, callback


def _assert_same_model_and_metrics(run_dir, reference_model):
    name = "model.safetensors" if (reference_model / "model.safetensors").exists() else "adapter_model.safetensors"
    want, got = load_file(reference_model / name), load_file(run_dir / "model" / name)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)

    def rows(out):
        return [(r["kind"], r["step"], r.get("loss"), r.get("test_acc_denoised"))
                for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]

    assert rows(run_dir) == rows(reference_model.parent)
    csv_lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows(run_dir)) + 1 and csv_lines[0].startswith("kind,step")


def test_resume_survives_a_kill_in_every_write_window(uninterrupted, models, data, tmp_path):
    """Each stop leaves the directory as a kill -9 at that moment would (a truncated or empty file, a torn
    line, a half-written temporary), and the next run resumes from the last checkpoint: the final adapter
    and metrics equal an uninterrupted run's."""
    _, reference, _ = uninterrupted
    out = tmp_path / "out"
    cfg = config(out)

    def stop_then(step, damage):
        stop, callback = _stop_at(step)
        result = finetune(cfg, *models, *data, callback=callback, stop_event=stop)
        assert result.stopped and result.step == step
        saved = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
        damage()
        return saved

    def empty_config():  # older versions wrote config.json in place: a kill between truncating and writing
        (out / "config.json").write_text("")
        (out / ".config.json.999.tmp").write_text('{"conf')  # and ours, killed before its rename

    def torn_metrics():  # killed mid-append
        with (out / "metrics.jsonl").open("a") as f:
            f.write('{"kind": "step", "step": 7, "lo')
        with (out / "metrics.csv").open("a") as f:
            f.write("step,7,0.1")

    def inside_checkpoint_write():  # killed while writing checkpoint.tmp: every file of it empty or cut
        tmp = out / "checkpoint.tmp"
        shutil.copytree(out / "checkpoint", tmp)
        os.truncate(tmp / "trained.safetensors", 100)
        (tmp / "optimizer.pt").write_bytes(b"")
        (tmp / "state.json").write_text('{"step": 99')

    def between_the_renames():  # the old checkpoint renamed away, the new one not yet in place
        (out / "checkpoint").rename(out / "checkpoint.old")

    assert stop_then(4, empty_config) == 4
    assert stop_then(9, torn_metrics) == 9
    assert stop_then(13, inside_checkpoint_write) == 13
    assert stop_then(17, between_the_renames) == 17
    events = []
    final = finetune(cfg, *models, *data, callback=events.append)
    assert events[0]["step"] == 18  # nothing lost beyond the last checkpoint
    assert not (out / ".config.json.999.tmp").exists() and json.loads((out / "config.json").read_text())["config"]
    _assert_same_model_and_metrics(out, reference)
    # a kill while the model is saved (out/model.tmp half written) is repaired by running again
    shutil.copytree(final.path, out / "model.tmp")
    os.truncate(out / "model.tmp" / "model.safetensors", 10)
    shutil.rmtree(final.path)
    finetune(cfg, *models, *data)
    assert not (out / "model.tmp").exists()
    _assert_same_model_and_metrics(out, reference)


def test_a_corrupt_checkpoint_advises_fresh_which_starts_over(uninterrupted, models, data, tmp_path):
    _, reference, _ = uninterrupted
    out = tmp_path / "out"
    stop, callback = _stop_at(6)
    finetune(config(out), *models, *data, callback=callback, stop_event=stop)
    (out / "checkpoint" / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(CadisError, match="corrupt.*pass --fresh to start this run over") as e:
        finetune(config(out), *models, *data)
    assert "\n" not in str(e.value)
    (out / "keep.txt").write_text("the user's own file")
    with pytest.raises(CadisError, match="another configuration.*--fresh"):
        finetune(config(out, lr=0.01), *models, *data)
    finetune(config(out), *models, *data, fresh=True)
    assert (out / "keep.txt").read_text() == "the user's own file"
    _assert_same_model_and_metrics(out, reference)


# ---------------------------------------------------------------- kill -9 through the real command


def test_kill_9_at_random_moments_loses_no_step_and_ends_identical(tiny_denoiser_dir, tiny_classifier_dir, tmp_path,
                                                                   capfd):
    """`cadis finetune` checkpointing every step, SIGKILLed three times at random moments (so
    also inside checkpoint, config and metrics writes): each resume starts at the last checkpoint on disk, and
    the final adapter and metrics equal those of an uninterrupted run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from cadis.cli import main

    from conftest import ROOT

    args = ["finetune", "--denoiser", str(tiny_denoiser_dir), "--classifier", str(tiny_classifier_dir),
            "--method", "ft-cadis", "--steps", "30", "--batch-size", "8", "--subset", "32", "--eval-size", "8",
            "--eval-every", "10", "--checkpoint-minutes", "0", "--seed", "5", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cadis", *args, "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def checkpoint_step() -> int:
        for d in ("checkpoint", "checkpoint.old"):
            if (out / d / "state.json").is_file():
                return json.loads((out / d / "state.json").read_text())["step"]
        return 0

    def resumed_at(text: str) -> int:
        return int(text.split("resuming at step ")[1].split()[0]) if "resuming at step" in text else 0

    rng = random.Random()
    delays, last = [], 0
    for kill in range(3):
        log = tmp_path / f"run{kill}.log"
        with log.open("w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
            deadline = time.time() + 180
            while time.time() < deadline and checkpoint_step() <= last + 1 and proc.poll() is None:
                time.sleep(0.05)
            delays.append(round(rng.uniform(0, 0.5), 3))
            time.sleep(delays[-1])
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        text = log.read_text()
        assert resumed_at(text) == last, (delays, text[-2000:])  # no step lost beyond the checkpoint
        last = checkpoint_step()
        assert last > 0, f"kill {kill} after {delays} s left no checkpoint"
        if last == 30:  # on a fast machine the run may finish inside the random delay: nothing left to kill
            break
    capfd.readouterr()
    assert main([*args, "--out", str(out)]) == 0  # the last resume runs here: only the kills need processes
    assert resumed_at(capfd.readouterr().out) == last
    _assert_same_model_and_metrics(out, tmp_path / "reference" / "model")
