"""The certification runner: resume after a kill, refusal of changed configurations, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import pytest

from cadis.certification.adaptive import RULE
from cadis.cli import main

from conftest import ROOT


def _args(den, clf, out, *extra):
    return ["certify", "--denoiser", str(den), "--classifier", f"local-dir:{clf}", "--dataset", "fashion-mnist",
            "--sigma", "0.25", "--n0", "8", "--n", "32", "--batch-size", "40", "--out", str(out), *extra]


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def test_certify_writes_cohen_columns_and_sidecar(tiny_denoiser_dir, tiny_classifier_dir, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "6", "--skip", "2")) == 0
    said = json.loads((tmp_path / "r.tsv.json").read_text())["acceleration"]
    engine = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("engine: "))
    assert engine.startswith(f"engine: {said['precision']} (auto: ")  # the console names what the sidecar records
    df = _rows(out)
    assert list(df.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert df["idx"].tolist() == [0, 2, 4]
    assert (df["correct"] == (df["predict"] == df["label"]).astype(int)).all()
    cfg = (tmp_path / "r.tsv.json").read_text()
    assert '"sigma": 0.25' in cfg and '"torch"' in cfg and '"seed": 0' in cfg


def test_auto_weighs_the_images_left_to_certify(tiny_denoiser_dir, tiny_classifier_dir, tmp_path, monkeypatch):
    from cadis.certification import engine_choice

    left, choose = [], engine_choice.choose_engine
    monkeypatch.setattr(engine_choice, "choose_engine", lambda *a: left.append(a[4]) or choose(*a))
    out = tmp_path / "r.tsv"
    for extra in (["--max", "3"], ["--max", "4"], ["--max", "4", "--fresh"]):  # new file, resumed, redone
        assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, *extra)) == 0
    assert left == [3, 1, 4]


def test_kill_and_resume_gives_each_index_once_and_keeps_earlier_rows(tiny_denoiser_dir, tiny_classifier_dir,
                                                                       tmp_path):
    out = tmp_path / "resume.tsv"
    args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "30")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cadis", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_text().splitlines()
    assert 4 <= len(before) < 31, "the run should have been killed midway"
    assert main(args) == 0  # the resume: the same command, run here (only the kill needs a process of its own)
    after = out.read_text().splitlines()
    complete_before = [line for line in before if line.count("\t") == 10]
    assert after[: len(complete_before)] == complete_before
    df = _rows(out)
    assert sorted(df["idx"]) == list(range(30)) and df["idx"].is_unique
    # Per-image seeds: the resumed file equals an uninterrupted run, timings aside.
    ref = tmp_path / "ref.tsv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, ref, "--max", "30")) == 0
    cols = ["idx", "label", "predict", "radius", "count_a", "p_a_lower"]
    pd.testing.assert_frame_equal(df.sort_values("idx")[cols].reset_index(drop=True), _rows(ref)[cols])


def test_changed_configuration_is_refused_unless_fresh(tiny_denoiser_dir, tiny_classifier_dir, tmp_path, capsys):
    out = tmp_path / "c.tsv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "2")) == 0
    changed = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "2")
    changed[changed.index("0.25")] = "0.5"
    assert main(changed) == 2
    assert "another configuration" in capsys.readouterr().err
    assert _rows(out)["sigma"].unique().tolist() == [0.25]
    assert main([*changed, "--fresh"]) == 0
    assert _rows(out)["sigma"].unique().tolist() == [0.5]


def test_shards_split_the_indices_and_analyze_merges_them(tiny_denoiser_dir, tiny_classifier_dir, tmp_path, capsys):
    out = tmp_path / "s.tsv"
    for i in range(2):
        assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "5", "--shard", f"{i}/2")) == 0
    a, b = _rows(tmp_path / "s.shard0of2.tsv"), _rows(tmp_path / "s.shard1of2.tsv")
    assert a["idx"].tolist() == [0, 2, 4] and b["idx"].tolist() == [1, 3]
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "s.shard0of2.tsv"), str(tmp_path / "s.shard1of2.tsv")]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| s "))
    assert [c.strip() for c in row.split("|")[1:3]] == ["s", "5"]  # one merged run of five images


def _run_cli(argv: list[str], capfd) -> tuple[int, str]:
    """Exit status and stderr of `cadis ARGV`, run in this process (stderr captured at the file-descriptor
    level); an exception escaping main() is a traceback. CADIS_BAD_INPUT_SUBPROCESS=1 runs `cadis` instead."""
    if os.environ.get("CADIS_BAD_INPUT_SUBPROCESS") == "1":
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([sys.executable, "-m", "cadis", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        return r.returncode, r.stderr
    capfd.readouterr()
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001  what escapes main() is what a user would see as a traceback
        code = 1
        sys.stderr.write(traceback.format_exc())
    return code, capfd.readouterr().err


def test_missing_inputs_give_one_line_errors_without_traceback(tiny_denoiser_dir, tiny_classifier_dir, tmp_path,
                                                               capfd):
    cases = [
        (_args(tmp_path / "no-denoiser", tiny_classifier_dir, tmp_path / "a.tsv"), "Denoiser directory"),
        (_args(tiny_denoiser_dir, tmp_path / "no-classifier", tmp_path / "b.tsv"), "Classifier directory"),
        (["certify", "--denoiser", str(tiny_denoiser_dir), "--classifier", f"local-dir:{tiny_classifier_dir}",
          "--dataset", "cifar10", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "c.tsv")],
         "CIFAR-10 not found"),
    ]
    for argv, message in cases:
        code, err = _run_cli(argv, capfd)
        assert code != 0
        assert message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_torchrun_two_processes_shard_and_merge(tiny_denoiser_dir, tiny_classifier_dir, tmp_path):
    out = tmp_path / "dist.tsv"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # "--" keeps torchrun's parser from reading our flags (it would take --n for its --nnodes).
    from conftest import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "cadis", "--", *_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "7")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    assert _rows(tmp_path / "dist.shard0of2.tsv")["idx"].tolist() == [0, 2, 4, 6]
    assert _rows(tmp_path / "dist.shard1of2.tsv")["idx"].tolist() == [1, 3, 5]
    merged = _rows(out)
    ref = tmp_path / "single.tsv"
    assert main(_args(tiny_denoiser_dir, tiny_classifier_dir, ref, "--max", "7")) == 0
    cols = ["idx", "label", "predict", "radius", "count_a"]
    pd.testing.assert_frame_equal(merged[cols], _rows(ref)[cols])


def test_adaptive_cli_records_its_settings_and_the_draws_each_image_used(tiny_denoiser_dir, tiny_classifier_dir,
                                                                          tmp_path):
    out = tmp_path / "adaptive.tsv"
    args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "6")
    args[args.index("--n") + 1] = "400"
    assert main([*args, "--adaptive", "--radii", "0.25,0.5"]) == 0
    df = _rows(out)
    assert df["n"].isin([100, 200, 400]).all()  # the looks of N=400
    cfg = json.loads((tmp_path / "adaptive.tsv.json").read_text())
    assert cfg["adaptive"] == {"tolerance": 0.025, "radii": [0.25, 0.5], "first_look": 100, "rule": RULE}
    assert cfg["acceleration"] == {"precision": cfg["precision_auto"]["precision"], "channels_last": False,
                                 "compile": False}  # --precision auto: the faster here, as the sidecar records
    # The same file without --adaptive is another configuration.
    assert main(args) == 2


def test_bf16_precision_is_recorded_and_bad_radii_are_refused(tiny_denoiser_dir, tiny_classifier_dir, tmp_path,
                                                               capsys):
    out = tmp_path / "bf16.tsv"
    assert main([*_args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "2"), "--precision", "bf16"]) == 0
    assert json.loads((tmp_path / "bf16.tsv.json").read_text())["acceleration"]["precision"] == "bf16"
    assert len(_rows(out)) == 2
    assert main([*_args(tiny_denoiser_dir, tiny_classifier_dir, tmp_path / "x.tsv"), "--adaptive",
                 "--radii", "0.5,big"]) == 2
    assert "--radii: must be comma-separated" in capsys.readouterr().err


ROW_COLUMNS = ["idx", "label", "predict", "radius", "count_a", "n", "p_a_lower"]


def _shared_equals_alone(denoiser, classifiers, config, batch_size, tmp_path):
    """Certify `classifiers` on shared draws, check each file against a run of that classifier alone, and return
    the shared run's outputs and rows."""
    from dataclasses import replace

    from cadis.certification.runner import certify_classifiers, certify_dataset
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    smooth = DenoisedSmoothing(denoiser, classifiers[0], config.sigma, batch_size=batch_size)
    outs = [(tmp_path / f"shared{k}.tsv", replace(config, classifier=str(k))) for k in range(len(classifiers))]
    certify_classifiers(smooth, classifiers, test, outs)
    shared = [_rows(out)[ROW_COLUMNS] for out, _ in outs]
    for k, clf in enumerate(classifiers):
        alone = tmp_path / f"alone{k}.tsv"
        certify_dataset(DenoisedSmoothing(denoiser, clf, config.sigma, batch_size=batch_size), test, alone, config)
        pd.testing.assert_frame_equal(shared[k], _rows(alone)[ROW_COLUMNS])
    return outs, shared


def test_shared_draw_certification_equals_separate_runs_and_resumes_per_file(tiny_denoiser_dir, tmp_path):

    import torch

    from cadis.certification.runner import CertifyConfig, certify_classifiers
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.data import load_dataset
    from cadis.models.classifier import ImageClassifier
    from cadis.models.denoiser import DiffusionDenoiser

    from conftest import make_tiny_vit

    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    classifiers = []
    for seed in (0, 1):
        vit = make_tiny_vit()
        torch.manual_seed(seed)
        for p in vit.parameters():  # differently initialised heads, so the two files must differ
            p.data.normal_(0, 0.3)
        classifiers.append(ImageClassifier(vit.eval(), (1, 28, 28), (0.5,), (0.5,)))
    test = load_dataset("fashion-mnist", "test")
    smooth = DenoisedSmoothing(denoiser, classifiers[0], 0.25, batch_size=24)
    config = CertifyConfig(denoiser="tiny", classifier="", dataset="fashion-mnist", sigma=0.25, n0=8, n=40,
                           alpha=0.01, seed=3, max_index=6)
    outs, shared = _shared_equals_alone(denoiser, classifiers, config, 24, tmp_path)
    assert not shared[0][["predict", "count_a"]].equals(shared[1][["predict", "count_a"]])
    # An interrupted run: one file lost its last row; re-running completes only that file.
    first = outs[0][0]
    first.write_text("".join(first.read_text().splitlines(keepends=True)[:-1]))
    second_before = outs[1][0].read_text()
    calls = [0, 0]  # head k's forward passes: only the head whose file lacks a row runs
    hooks = [c.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
             for k, c in enumerate(classifiers)]
    certify_classifiers(smooth, classifiers, test, outs)
    for h in hooks:
        h.remove()
    pd.testing.assert_frame_equal(_rows(first)[ROW_COLUMNS], shared[0])
    assert outs[1][0].read_text() == second_before
    assert calls[0] > 0 and calls[1] == 0


def test_adaptive_shared_draws_equal_separate_adaptive_runs(tiny_denoiser_dir, tmp_path):
    from dataclasses import replace

    import torch

    from cadis.certification.adaptive import AdaptiveSettings
    from cadis.certification.runner import CertifyConfig, certify_classifiers
    from cadis.certification.smoothing import DenoisedSmoothing
    from cadis.data import load_dataset
    from cadis.errors import CadisError
    from cadis.models.classifier import ImageClassifier
    from cadis.models.denoiser import DiffusionDenoiser

    from conftest import make_tiny_vit

    denoiser = DiffusionDenoiser.from_pretrained(tiny_denoiser_dir)
    vit = make_tiny_vit()  # near-constant on every draw: certifies
    torch.manual_seed(0)
    for p in vit.parameters():
        p.data.normal_(0, 0.3)
    torch.manual_seed(1)  # large random weights on the pixels: its vote follows the noise, so it abstains early
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    torch.nn.init.normal_(linear[1].weight, 0, 5.0)
    classifiers = [ImageClassifier(m.eval(), (1, 28, 28), (0.5,), (0.5,), classes=[str(c) for c in range(10)])
                   for m in (vit, linear)]
    test = load_dataset("fashion-mnist", "test")
    smooth = DenoisedSmoothing(denoiser, classifiers[0], 0.25, batch_size=64)
    adaptive = AdaptiveSettings(0.025, (0.0, 0.25, 0.5), first_look=25)
    config = CertifyConfig(denoiser="tiny", classifier="", dataset="fashion-mnist", sigma=0.25, n0=10, n=200,
                           alpha=0.01, seed=5, max_index=6, adaptive=adaptive)
    outs, shared = _shared_equals_alone(denoiser, classifiers, config, 64, tmp_path)
    assert not shared[0]["n"].equals(shared[1]["n"])  # the heads stopped at different looks
    assert (shared[0]["n"] < 200).any()  # and the rows come from an adaptive run
    mixed = [outs[0], (tmp_path / "fixed.tsv", replace(config, classifier="1", adaptive=None))]
    with pytest.raises(CadisError, match="adaptive settings"):
        certify_classifiers(smooth, classifiers, test, mixed)


def test_batch_size_auto_is_recorded_and_bad_values_are_refused(tiny_denoiser_dir, tiny_classifier_dir, tmp_path,
                                                                capsys):
    def args(value, out):
        a = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "1")
        a[a.index("--batch-size") + 1] = value
        return a

    assert main(args("auto", tmp_path / "auto.tsv")) == 0  # on the CPU: the compute-bound default
    assert json.loads((tmp_path / "auto.tsv.json").read_text())["batch_size"] == 256
    assert main(args("lots", tmp_path / "bad.tsv")) == 2
    assert "--batch-size: must be a positive integer or 'auto'" in capsys.readouterr().err


def test_multistep_certification_repeats_row_for_row(tiny_denoiser_dir, tiny_classifier_dir, tmp_path):
    files = [tmp_path / f"multistep{k}.tsv" for k in range(2)]
    for out in files:
        args = _args(tiny_denoiser_dir, tiny_classifier_dir, out, "--max", "3", "--mode", "multistep", "--steps", "3")
        assert main(args) == 0
    cols = ["idx", "label", "predict", "radius", "count_a", "n", "p_a_lower"]
    a, b = (_rows(f)[cols] for f in files)
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((tmp_path / "multistep0.tsv.json").read_text())["steps"] == 3


def test_rows_round_p_a_and_the_radius_down():
    from cadis.certification.runner import floor_decimals, format_row
    from cadis.certification.smoothing import Certificate, lower_confidence_bound, radius

    assert floor_decimals(0.24999999999999997, 4) == "0.2499" and floor_decimals(0.6158, 4) == "0.6158"
    assert floor_decimals(0.0, 4) == "0.0000"
    p = lower_confidence_bound(7057, 10_000, 0.001)
    cert = Certificate(0, radius(0.5, p), 7057, 10_000, p)
    assert f"{cert.radius:.4f}" == "0.2500"  # what rounding to nearest wrote
    fields = format_row(3, 0, cert, 1.0, 0.5, 0.001).rstrip("\n").split("\t")
    assert fields[3] == "0.2499" and float(fields[8]) <= p and p - float(fields[8]) < 1e-6
