"""Bad input to fine-tuning, model loading and data, through the real command line (`cadis`).

Each row is one bad input: the command must exit non-zero with a one-line `error: ...` on stderr, no traceback,
and must not have written its output (the finetune --out directory, the certify --out file). Each case is its
own test and runs once per session; the summary test prints the counts (tried, clean errors, tracebacks).

The cases run in this process (`cadis.cli.main`, stderr captured at the file-descriptor level, with warnings
logged to the root logger printed there as a fresh interpreter would print them); CADIS_BAD_INPUT_SUBPROCESS=1
runs each as `python -m cadis` instead, a few at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from cadis.cli import main
from cadis.data import ASSETS

from conftest import ROOT

MODELS = ASSETS  # the embedded models (package data)
VIT, DDPM = MODELS / "fmnist-vit", MODELS / "fmnist-ddpm"
ADAPTER = MODELS / "finetuned" / "denoised-ce-s0.25"


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # {tmp} and {models} are filled in; {out} is the output the command must not write
    expect: str  # a fragment of the one-line message
    writes_nothing: bool = True


# ---------------------------------------------------------------- broken models, made once


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _drop(path: Path, part: str) -> None:
    tensors = load_file(path)
    del tensors[next(k for k in sorted(tensors) if part in k)]
    save_file(tensors, path, metadata={"format": "pt"})


def _poison(path: Path) -> None:
    tensors = load_file(path)
    key = next(k for k in sorted(tensors) if tensors[k].is_floating_point())
    flat = tensors[key].clone().view(-1)
    flat[0] = float("nan")
    tensors[key] = flat.view_as(tensors[key])
    save_file(tensors, path, metadata={"format": "pt"})


def _adapter(dst: Path) -> Path:
    """The shipped adapter, copied with its base named by absolute path (so it loads from anywhere)."""
    d = _copy(ADAPTER, dst)
    meta = json.loads((d / "cadis_adapter.json").read_text())
    (d / "cadis_adapter.json").write_text(json.dumps({**meta, "base_classifier": f"local-dir:{VIT}"}))
    return d


def make_broken_models(tmp: Path) -> None:
    os.truncate(_copy(VIT, tmp / "vit-truncated") / "model.safetensors", 1_000_000)  # the repro
    os.truncate(_copy(VIT, tmp / "vit-empty-weights") / "model.safetensors", 0)
    (_copy(VIT, tmp / "vit-garbage-config") / "config.json").write_text("garbage{")
    (_copy(VIT, tmp / "vit-empty-config") / "config.json").write_text("{}")
    (_copy(VIT, tmp / "vit-0-byte-config") / "config.json").write_text("")
    _drop(_copy(VIT, tmp / "vit-missing-key") / "model.safetensors", "head.weight")
    _poison(_copy(VIT, tmp / "vit-nan") / "model.safetensors")
    _copy(VIT, tmp / "vit-no-weights").joinpath("model.safetensors").unlink()
    (_adapter(tmp / "adapter-garbage-meta") / "cadis_adapter.json").write_text("garbage")
    (_adapter(tmp / "adapter-empty-meta") / "cadis_adapter.json").write_text("{}")
    (_adapter(tmp / "adapter-garbage-peft") / "adapter_config.json").write_text("garbage")
    (_adapter(tmp / "adapter-empty-peft") / "adapter_config.json").write_text("{}")
    os.truncate(_adapter(tmp / "adapter-truncated") / "adapter_model.safetensors", 1000)
    _drop(_adapter(tmp / "adapter-missing-key") / "adapter_model.safetensors", "lora_B")
    _poison(_adapter(tmp / "adapter-nan") / "adapter_model.safetensors")
    os.truncate(_copy(DDPM, tmp / "ddpm-truncated") / "unet" / "diffusion_pytorch_model.safetensors", 100_000)
    os.truncate(_copy(DDPM, tmp / "ddpm-empty-weights") / "unet" / "diffusion_pytorch_model.safetensors", 0)
    (_copy(DDPM, tmp / "ddpm-garbage-config") / "unet" / "config.json").write_text("garbage")
    (_copy(DDPM, tmp / "ddpm-empty-config") / "unet" / "config.json").write_text("{}")
    (_copy(DDPM, tmp / "ddpm-empty-scheduler") / "scheduler" / "scheduler_config.json").write_text("{}")
    _drop(_copy(DDPM, tmp / "ddpm-missing-key") / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.weight")
    _poison(_copy(DDPM, tmp / "ddpm-nan") / "unet" / "diffusion_pytorch_model.safetensors")
    (tmp / "a-file").write_text("not a directory")
    (tmp / "empty-folder").mkdir()
    from PIL import Image

    (tmp / "broken-images" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "broken-images" / "cat" / "0.png")
    (tmp / "broken-images" / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp / "corrupt-run" / "checkpoint").mkdir(parents=True)  # a checkpoint whose files are damaged
    (tmp / "corrupt-run" / "checkpoint" / "state.json").write_text('{"step": 3}')
    (tmp / "corrupt-run" / "checkpoint" / "trained.safetensors").write_bytes(b"")


# ---------------------------------------------------------------- the table

TINY = ("--steps", "2", "--batch-size", "8", "--subset", "16", "--eval-size", "8")
FT = ("finetune", *TINY, "--out", "{out}")
FT_MODELS = ("finetune", "--denoiser", str(DDPM), "--classifier", f"local-dir:{VIT}", *TINY, "--out", "{out}")


def _certify(classifier: str = f"local-dir:{VIT}", denoiser: str = str(DDPM), dataset: str = "fashion-mnist"):
    return ("certify", "--dataset", dataset, "--denoiser", denoiser, "--classifier", classifier, "--max", "1",
            "--n0", "4", "--n", "8", "--out", "{out}")


CASES = [
    # finetune: every numeric flag, out of range or not finite (nothing loaded, nothing written)
    Case("finetune --eps nan", (*FT, "--eps", "nan"), "--eps must be a finite number >= 0"),
    Case("finetune --lr inf", (*FT, "--lr", "inf"), "--lr must be a finite number"),
    Case("finetune --weight-decay nan", (*FT, "--weight-decay", "nan"), "--weight-decay must be a finite number"),
    Case("finetune --lr nan", (*FT, "--lr", "nan"), "--lr must be a finite number"),
    Case("finetune --lora-r 0", (*FT, "--lora-r", "0"), "--lora-r must be an integer >= 1"),
    Case("finetune --lr 0", (*FT, "--lr", "0"), "--lr must be"),
    Case("finetune --lr -1e-3", (*FT, "--lr=-1e-3"), "--lr must be"),
    Case("finetune --lr 10", (*FT, "--lr", "10"), "--lr must be a finite number in (0, 1]"),
    Case("finetune --sigma nan", (*FT, "--sigma", "nan"), "--sigma must be"),
    Case("finetune --sigma 0", (*FT, "--sigma", "0"), "--sigma must be"),
    Case("finetune --sigma -0.25", (*FT, "--sigma", "-0.25"), "--sigma must be"),
    Case("finetune --sigma inf", (*FT, "--sigma", "inf"), "--sigma must be"),
    Case("finetune --lam inf", (*FT, "--lam", "inf"), "--lam must be"),
    Case("finetune --lam -1", (*FT, "--lam", "-1"), "--lam must be"),
    Case("finetune --eps -0.1", (*FT, "--eps", "-0.1"), "--eps must be"),
    Case("finetune --num-draws 0", (*FT, "--num-draws", "0"), "--num-draws must be an integer >= 1"),
    Case("finetune --adv-steps -1", (*FT, "--adv-steps", "-1"), "--adv-steps must be"),
    Case("finetune --steps -1", (*FT, "--steps", "-1"), "--steps must be"),
    Case("finetune --steps 10^7", (*FT, "--steps", "10000000"), "--steps must be an integer from 0 to"),
    Case("finetune --batch-size 0", (*FT, "--batch-size", "0"), "--batch-size must be"),
    Case("finetune --warmup -1", (*FT, "--warmup", "-1"), "--warmup must be"),
    Case("finetune --min-lr nan", (*FT, "--min-lr", "nan"), "--min-lr must be"),
    Case("finetune --min-lr above --lr", (*FT, "--min-lr", "0.5"), "must not exceed --lr"),
    Case("finetune --layer-decay 0", (*FT, "--layer-decay", "0"), "--layer-decay must be"),
    Case("finetune --layer-decay nan", (*FT, "--layer-decay", "nan"), "--layer-decay must be"),
    Case("finetune --subset below a batch", (*FT, "--subset", "3"), "--subset must be an integer >= 8"),
    Case("finetune --seed -1", (*FT, "--seed", "-1"), "--seed must be"),
    Case("finetune --checkpoint-minutes nan", (*FT, "--checkpoint-minutes", "nan"), "--checkpoint-minutes must be"),
    Case("finetune --eval-every -1", (*FT, "--eval-every", "-1"), "--eval-every must be"),
    Case("finetune --eval-size -5", (*FT, "--eval-size", "-5"), "--eval-size must be"),
    Case("finetune --lora-alpha 0", (*FT, "--lora-alpha", "0"), "--lora-alpha must be"),
    Case("finetune --weight-decay inf", (*FT, "--weight-decay", "inf"), "--weight-decay must be"),
    Case("finetune --threads -1", (*FT, "--threads", "-1"), "--threads: must be a whole number >= 0"),
    Case("finetune --threads 100000", (*FT, "--threads", "100000"), "--threads: must be a whole number from 0 to"),
    Case("finetune --seed 2**32", (*FT, "--seed", str(2**32)), "--seed must be"),
    Case("finetune --device bogus", (*FT, "--device", "bogus"), "is not a device"),
    Case("finetune --dataset beside a preset", (*FT, "--dataset", "{tmp}/no-such-folder"),
         "needs --denoiser and --classifier"),  # used or refused, never ignored
    Case("finetune --weight-decay-end nan", (*FT, "--weight-decay-end", "nan"), "--weight-decay-end must be"),
    Case("finetune --eval-offset -1", (*FT, "--eval-offset", "-1"), "--eval-offset must be"),
    # finetune: what only the models, data or --out can tell (still refused before writing)
    Case("finetune --sigma beyond the denoiser", (*FT_MODELS, "--sigma", "100"), "beyond this scheduler"),
    Case("finetune --out is a file", ("finetune", *TINY, "--out", "{tmp}/a-file"), "is a file", False),
    Case("finetune --out under a file", ("finetune", *TINY, "--out", "{tmp}/a-file/run"), "which is a file", False),
    Case("finetune missing ImageFolder", (*FT_MODELS, "--dataset", "{tmp}/no-such-folder"), "does not exist"),
    Case("finetune empty ImageFolder", (*FT_MODELS, "--dataset", "{tmp}/empty-folder"), "not an ImageFolder"),
    Case("finetune unreadable image", (*FT_MODELS, "--dataset", "{tmp}/broken-images"), "1.png is not a readable"),
    Case("finetune corrupt checkpoint", ("finetune", *TINY, "--out", "{tmp}/corrupt-run"), "pass --fresh", False),
    Case("finetune truncated classifier", ("finetune", "--denoiser", str(DDPM), "--classifier",
                                           "local-dir:{tmp}/vit-truncated", *TINY, "--out", "{out}"), "truncated"),
    Case("finetune non-finite classifier", ("finetune", "--denoiser", str(DDPM), "--classifier", "{tmp}/vit-nan",
                                            *TINY, "--out", "{out}"), "non-finite"),
    Case("finetune truncated denoiser", ("finetune", "--denoiser", "{tmp}/ddpm-truncated", "--classifier",
                                         str(VIT), *TINY, "--out", "{out}"), "truncated"),
    # certify: every broken classifier, adapter and denoiser (the --out file is not created)
    Case("certify truncated model.safetensors", _certify("local-dir:{tmp}/vit-truncated"), "truncated or corrupt"),
    Case("certify 0-byte model.safetensors", _certify("local-dir:{tmp}/vit-empty-weights"), "is empty (0 bytes)"),
    Case("certify no model.safetensors", _certify("local-dir:{tmp}/vit-no-weights"), "has no model.safetensors"),
    Case("certify garbage config.json", _certify("local-dir:{tmp}/vit-garbage-config"), "not valid JSON"),
    Case("certify {} as config.json", _certify("local-dir:{tmp}/vit-empty-config"), "neither an architecture"),
    Case("certify 0-byte config.json", _certify("{tmp}/vit-0-byte-config"), "config.json is empty"),
    Case("certify missing key", _certify("local-dir:{tmp}/vit-missing-key"), "head.weight"),
    Case("certify non-finite classifier", _certify("{tmp}/vit-nan"), "non-finite weights"),
    Case("certify garbage cadis_adapter.json", _certify("{tmp}/adapter-garbage-meta"), "not valid JSON"),
    Case("certify {} as cadis_adapter.json", _certify("{tmp}/adapter-empty-meta"), "names no base_classifier"),
    Case("certify garbage adapter_config.json", _certify("{tmp}/adapter-garbage-peft"), "not valid JSON"),
    Case("certify {} as adapter_config.json", _certify("{tmp}/adapter-empty-peft"), "no peft_type"),
    Case("certify truncated adapter weights", _certify("{tmp}/adapter-truncated"), "truncated or corrupt"),
    Case("certify adapter missing key", _certify("{tmp}/adapter-missing-key"), "lacks 1 of the adapter's tensors"),
    Case("certify non-finite adapter", _certify("{tmp}/adapter-nan"), "non-finite weights"),
    Case("certify truncated denoiser", _certify(denoiser="{tmp}/ddpm-truncated"), "truncated or corrupt"),
    Case("certify 0-byte denoiser weights", _certify(denoiser="{tmp}/ddpm-empty-weights"), "is empty (0 bytes)"),
    Case("certify garbage denoiser config", _certify(denoiser="{tmp}/ddpm-garbage-config"), "not valid JSON"),
    Case("certify {} as denoiser config", _certify(denoiser="{tmp}/ddpm-empty-config"), "no _class_name"),
    Case("certify {} as scheduler config", _certify(denoiser="{tmp}/ddpm-empty-scheduler"), "no _class_name"),
    Case("certify denoiser missing key", _certify(denoiser="{tmp}/ddpm-missing-key"), "conv_in.weight"),
    Case("certify non-finite denoiser", _certify(denoiser="{tmp}/ddpm-nan"), "non-finite weights"),
    Case("certify missing ImageFolder", _certify(dataset="{tmp}/no-such-folder"), "does not exist"),
    Case("certify empty ImageFolder", _certify(dataset="{tmp}/empty-folder"), "not an ImageFolder"),
    Case("certify unreadable image", _certify(dataset="{tmp}/broken-images"), "1.png is not a readable image"),
]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    wrote: bool


def _fill(arg: str, tmp: Path, out: Path) -> str:
    return arg.replace("{tmp}", str(tmp)).replace("{out}", str(out))


SUBPROCESS = os.environ.get("CADIS_BAD_INPUT_SUBPROCESS") == "1"


def _out(case: Case, index: int, tmp: Path) -> Path:
    return tmp / f"out{index}.{'tsv' if case.argv[0] == 'certify' else 'd'}"


def _run_subprocess(case: Case, index: int, tmp: Path) -> Outcome:
    out = _out(case, index, tmp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "cadis", *(_fill(a, tmp, out) for a in case.argv)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return Outcome(proc.returncode, proc.stderr, out.exists())


def _main_in_process(argv: list[str], capfd) -> tuple[int, str]:
    """Exit status and stderr of `cadis ARGV` run by cadis.cli.main here; an exception escaping main() is a
    traceback. A fresh interpreter prints warnings logged without a handler on stderr (logging's last resort);
    under pytest the root logger has pytest's handlers, so a handler of the same level and format stands in."""
    stand_in = logging.StreamHandler(sys.stderr)
    stand_in.setLevel(logging.WARNING)
    capfd.readouterr()
    logging.getLogger().addHandler(stand_in)
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001  what escapes main() is what a user would see as a traceback
        code = 1
        sys.stderr.write(traceback.format_exc())
    finally:
        logging.getLogger().removeHandler(stand_in)
    return code, capfd.readouterr().err


def _run_in_process(case: Case, index: int, tmp: Path, capfd) -> Outcome:
    out = _out(case, index, tmp)
    code, err = _main_in_process([_fill(a, tmp, out) for a in case.argv], capfd)
    return Outcome(code, err, out.exists())


@dataclass
class Table:
    tmp: Path  # the broken models, images and folders the cases name
    outcomes: dict[str, Outcome]  # filled as the cases run, once each


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Table:
    tmp = tmp_path_factory.mktemp("bad-input")
    make_broken_models(tmp)
    return Table(tmp, {})


@pytest.fixture
def outcome(table, capfd, monkeypatch):
    """outcome(case): what `cadis` did with the case (run on first use, from the repository root as before)."""
    monkeypatch.chdir(ROOT)

    def get(case: Case) -> Outcome:
        if case.name not in table.outcomes:
            if SUBPROCESS:  # all rows at once, a few processes at a time
                todo = [(i, c) for i, c in enumerate(CASES) if c.name not in table.outcomes]
                with ThreadPoolExecutor(max_workers=3) as pool:
                    results = pool.map(lambda ic: _run_subprocess(ic[1], ic[0], table.tmp), todo)
                    table.outcomes.update({c.name: o for (_, c), o in zip(todo, results)})
            else:
                table.outcomes[case.name] = _run_in_process(case, CASES.index(case), table.tmp, capfd)
        return table.outcomes[case.name]
    return get


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clean_line(case, outcome):
    o = outcome(case)
    assert "Traceback" not in o.stderr, o.stderr[-3000:]
    assert o.returncode != 0
    lines = _lines(o.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), o.stderr[-3000:]
    assert case.expect in lines[0], lines[0]
    if case.writes_nothing:
        assert not o.wrote, "the output was written although the input was refused"


def test_summary(outcome, capfd):
    outcomes = {case.name: outcome(case) for case in CASES}  # run already, unless selected alone
    tried = len(outcomes)
    tracebacks = sum("Traceback" in o.stderr for o in outcomes.values())
    clean = sum(o.returncode != 0 and len(_lines(o.stderr)) == 1 and _lines(o.stderr)[0].startswith("error: ")
                for o in outcomes.values())
    with capfd.disabled():
        print(f"\nbad inputs tried: {tried}, clean errors: {clean}, tracebacks: {tracebacks}")
    assert clean == tried and tracebacks == 0


def test_a_folder_of_rgb_images_of_mixed_sizes_fine_tunes_and_config_json_says_how(tmp_path, capfd, monkeypatch):
    """The positive side of the table: a user's own images are brought to the models' input."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            size = (32 + 8 * i, 24 + 4 * k)
            Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    classifier = tmp_path / "vit2"  # a 2-class head on the embedded ViT: the folder has 2 classes
    _copy(VIT, classifier)
    cfg = json.loads((classifier / "config.json").read_text())
    cfg.update(num_classes=2, label_names=["cat", "dog"], model_args={**cfg["model_args"], "num_classes": 2})
    (classifier / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(classifier / "model.safetensors")
    tensors["head.weight"], tensors["head.bias"] = tensors["head.weight"][:2].clone(), tensors["head.bias"][:2].clone()
    save_file(tensors, classifier / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "run"
    monkeypatch.chdir(ROOT)
    code, err = _main_in_process(["finetune", "--denoiser", str(DDPM), "--classifier", f"local-dir:{classifier}",
                                  "--dataset", str(tmp_path / "imgs"), "--method", "sce-only", "--steps", "2",
                                  "--batch-size", "4", "--eval-size", "4", "--out", str(out)], capfd)
    assert code == 0, err[-3000:]
    note = json.loads((out / "config.json").read_text())["images"]
    assert "RGB images converted to 1 channel" in note and "8 of 8 images resized" in note and "to 28×28" in note
    assert json.loads((out / "model" / "finetune.json").read_text())["images"] == note
