"""The embedded benchmark: `none`, `denoised-ce` and `ft-cadis` at σ ∈ {0.25, 0.5, 1.0} on Fashion-MNIST.

`python -m experiments results` runs every stage, each resumable: it fine-tunes the embedded classifier
(LoRA) per method and σ, copies the adapters to src/cadis/assets/finetuned/, certifies the first test images
into experiments/results/*.tsv, and writes the report (experiments/report.py): tables, plotly figures and the
verdict on the paper's ordering. Re-running continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from cadis.acceleration import Acceleration
from cadis.analysis.evaluation import selection_rates
from cadis.analysis.hallucination import class_aurocs, class_rates, detector_summary, draws_frame, score_images
from cadis.certification.adaptive import AdaptiveSettings, default_tolerance
from cadis.certification.engine_choice import choose_engine, describe_engine, started_acceleration
from cadis.certification.output import rows_written
from cadis.certification.runner import CertifyConfig, certify_classifiers
from cadis.certification.smoothing import DenoisedSmoothing
from cadis.data import FASHION_MNIST_CLASSES, ImageDataset
from cadis.errors import CadisError
from cadis.models.loading import load_adapter, load_classifier, save_classifier
from cadis.models.presets import SEARCH_ROOTS, get_preset
from cadis.training.finetune import FinetuneConfig, finetune
from cadis.training.objective import METHODS as OBJECTIVE_METHODS
from cadis.training.recipes import RECIPES, get_recipe
from experiments.paths import FINETUNED, RESULTS, in_repository
from experiments.report import write_report
from experiments.verdict import RADII

METHODS = ("none", "denoised-ce", "ft-cadis")
SIGMAS = (0.25, 0.5, 1.0)
# Named runs that change a hyperparameter of a method: name -> (method, FinetuneConfig overrides).
VARIANTS = {"ft-cadis-detached": ("ft-cadis", {"detach_target": True}),
            "ft-cadis-detached-lam1": ("ft-cadis", {"detach_target": True, "lam": 1.0}),
            "ft-cadis-balanced": ("ft-cadis", {"madv_class_balance": True})}  # ours, beyond the paper
# Ours, beyond the paper: one classifier whose weights interpolate two fine-tunes of one recipe and σ,
# θ = (1−a)·θ_sce-only + a·θ_ft-cadis (`lora.interpolate_lora`); built, not trained. name -> (first, second, a)
INTERPOLATIONS = {f"interp-a{round(100 * a)}": ("sce-only", "ft-cadis", a) for a in (0.25, 0.5, 0.75)}
RUNS = (*OBJECTIVE_METHODS, *VARIANTS, *INTERPOLATIONS)
TRAIN_SIZE = 60_000  # Fashion-MNIST training images: recipes count epochs of it


def run_method(run: str) -> tuple[str, dict]:
    """The objective method of a run name and its FinetuneConfig overrides (a variant's and its recipe's).

    A run is `<method or variant>[.<recipe>[.seed<k>]]`, e.g. `ft-cadis.authors-lora` or
    `ft-cadis.authors-lora-whole.seed1` (training seed 1; 0 otherwise); without a recipe it is `short`."""
    name, _, recipe = run.partition(".")
    recipe, _, seed = recipe.partition(".")
    if seed and not (seed.startswith("seed") and seed[4:].isdigit()):
        raise CadisError(f"Unknown run {run!r}: after the recipe comes .seed<k> (e.g. .seed1).")
    if name not in RUNS:
        raise CadisError(f"Unknown run {run!r}; choose from: {', '.join(RUNS)}, optionally followed by "
                         f".<recipe> ({', '.join(RECIPES)}).")
    if name in INTERPOLATIONS:
        return "interpolation", {}
    method, overrides = VARIANTS.get(name, (name, {}))
    return method, {**get_recipe(recipe or "short").finetune_values(TRAIN_SIZE), **overrides,
                    "seed": int(seed[4:] or 0)}


def finetune_config(run: str, sigma: float, steps: int | None, runs: Path, compile: bool = False) -> FinetuneConfig:
    """The run's configuration; `steps` overrides the recipe's length (None keeps it)."""
    method, values = run_method(run)
    evals = values.pop("evals")
    if steps is not None and steps != values["steps"]:
        values["warmup"] = max(1, round(values["warmup"] * steps / values["steps"]))
        values["steps"] = steps
    values.setdefault("save_as", "adapter")
    values.setdefault("eval_size", 500)
    return FinetuneConfig(out=str(runs / f"fashion-mnist-{run}-s{sigma:g}"), method=method, sigma=sigma,
                          eval_every=max(1, values["steps"] // evals), compile=compile,
                          **values)


def classifier_spec(run: str, sigma: float) -> str:
    preset = get_preset("fashion-mnist")
    return preset.classifier if run == "none" else str(FINETUNED / f"{run}-s{sigma:g}")


def run_finetuning(methods=METHODS, sigmas=SIGMAS, steps: int | None = None, runs: Path = Path("runs/finetune"),
                   compile: bool = False) -> None:
    preset = get_preset("fashion-mnist")
    denoiser, classifier = preset.load_models()
    train, test = preset.load_dataset("train"), preset.load_dataset("test")
    for sigma in sigmas:
        for method in methods:
            run_method(method)
            target = Path(classifier_spec(method, sigma))
            if method == "none" or (target / "cadis_adapter.json").exists():
                continue
            if method.partition(".")[0] in INTERPOLATIONS:
                build_interpolation(method, sigma)
                continue
            model_dir = finetune(finetune_config(method, sigma, steps, runs, compile), denoiser, classifier,
                                 train, test).path
            shutil.copytree(model_dir, target, dirs_exist_ok=True)
            shutil.copy(Path(model_dir).parent / "metrics.csv", target / "metrics.csv")


def build_interpolation(run: str, sigma: float) -> Path:
    """The interpolated classifier of `run` (INTERPOLATIONS) at σ, from its two shipped fine-tunes, saved as an
    adapter beside them with interpolation.json saying what it was made of."""
    from cadis.models.lora import interpolate_lora

    name, _, recipe = run.partition(".")
    first, second, a = INTERPOLATIONS[name]
    tag = f".{recipe}" if recipe else ""
    sources = [Path(classifier_spec(r + tag, sigma)) for r in (first, second)]
    for source in sources:
        if not (source / "cadis_adapter.json").is_file():
            raise CadisError(f"{run} at σ={sigma:g} interpolates {source.name}, which is not fine-tuned yet; "
                             f"run `results --stage finetune --methods {first + tag} {second + tag}` first.")
    models = [load_adapter(str(s), merge=False, search_roots=SEARCH_ROOTS) for s in sources]
    mixed = interpolate_lora(*models, a)
    mixed.spec = get_preset("fashion-mnist").classifier  # the adapter's base is the embedded classifier
    target = Path(classifier_spec(run, sigma))
    save_classifier(mixed, target, project_root=SEARCH_ROOTS[0])
    (target / "interpolation.json").write_text(json.dumps(
        {"method": "weight interpolation (ours, beyond the paper)", "a": a,
         "formula": f"(1-a)*theta[{first + tag}] + a*theta[{second + tag}]",
         "sources": [in_repository(str(s)) for s in sources], "sigma": sigma}, indent=2) + "\n")
    return target


def run_certification(methods=METHODS, sigmas=SIGMAS, max_images: int = 500, n0: int = 100, n: int = 1000,
                      alpha: float = 0.001, batch_size: int = 550, seed: int = 0,
                      acceleration: Acceleration | None = None, adaptive: AdaptiveSettings | None = None,
                      auto: tuple[bool, bool] = (False, False)) -> None:
    """Per σ, certify every method on the same draws: the denoiser runs once for all of them. With `adaptive`,
    adaptive CERTIFY into results_folder(n, adaptive), beside the main results rather than over them. `auto`
    (precision, compile): choose that lever as `cadis certify`'s auto does (resumed files keep theirs)."""
    acceleration = acceleration or Acceleration()
    preset = get_preset("fashion-mnist")
    denoiser, _ = preset.load_models()
    test = preset.load_dataset("test")
    for sigma in sigmas:
        shared = CertifyConfig(denoiser=in_repository(preset.denoiser), classifier="", dataset=preset.dataset,
                               split="test",
                               sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size,
                               acceleration=acceleration, max_index=max_images, preset=preset.name,
                               adaptive=adaptive)
        folder = results_folder(n, adaptive)
        tag = "" if adaptive is None else f" N={n} adaptive"  # labels stay unique beside the main runs
        classifiers, outs = [], []
        for method in methods:
            spec = classifier_spec(method, sigma)
            classifiers.append(load_classifier(spec, search_roots=SEARCH_ROOTS))
            notes = {"run": method, "shared_draws_with": [m for m in methods if m != method]}
            for made_by in ("finetune", "interpolation"):  # how the classifier was made travels with the results
                if (Path(spec) / f"{made_by}.json").is_file():
                    notes[made_by] = json.loads((Path(spec) / f"{made_by}.json").read_text())
            config = replace(shared, classifier=in_repository(spec), method=run_method(method)[0],
                             label=f"{method} σ={sigma:g}{tag}",
                             notes=notes)
            outs.append((folder / f"{method}_s{sigma:g}.tsv", config))

        def make(acc: Acceleration, sigma=sigma, first=classifiers[0]) -> DenoisedSmoothing:
            return DenoisedSmoothing(denoiser, first, sigma, batch_size, acceleration=acc)

        smooth = make(acceleration)
        if any(auto):  # the runs share draws, so one choice for all: the first file's when resuming
            first_out, first_config = outs[0]
            smooth, chosen = choose_engine(smooth, make, first_config, started_acceleration(first_out),
                                           len(first_config.indices(len(test))) - rows_written(first_out), *auto)
            extra = {k: chosen.notes[k] for k in ("precision_auto", "compile_auto") if k in chosen.notes}
            outs = [(out, replace(config, acceleration=chosen.acceleration, notes={**config.notes, **extra}))
                    for out, config in outs]
        print(f"σ={sigma:g}, {describe_engine(outs[0][1])}", flush=True)
        certify_classifiers(smooth, classifiers, test, outs)


def run_diagnostics(sigmas=SIGMAS, limit: int = 2000, num_draws: int = 4, seed: int = 0) -> pd.DataFrame:
    """Selection and mask rates per class of the off-the-shelf classifier on training images (what the
    fine-tuning objectives see at step 0), into selection_rates.csv with its configuration beside it."""
    preset = get_preset("fashion-mnist")
    denoiser, classifier = preset.load_models()
    train = preset.load_dataset("train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:limit]  # a random sample
    train = ImageDataset(train.images[pick], train.labels[pick], train.classes, train.name)
    tables = [selection_rates(denoiser, classifier, train, sigma, num_draws, seed, limit=limit).assign(sigma=sigma)
              for sigma in sigmas]
    table = pd.concat(tables).rename_axis("class").reset_index()
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "selection_rates.csv", index=False)
    config = {"denoiser": preset.denoiser, "classifier": preset.classifier, "dataset": preset.dataset,
              "split": "train", "images": limit, "order": f"randperm(seed={seed})", "num_draws": num_draws,
              "seed": seed, "sigmas": list(sigmas)}
    (RESULTS / "selection_rates.json").write_text(json.dumps(config, indent=2))
    return table


def run_hallucination(sigmas=SIGMAS, images: int = 500, draws: int = 4, multistep_images: int = 100,
                      seed: int = 0) -> pd.DataFrame:
    """Hallucinated draws per class, and low confidence as their detector (AUROC), for the off-the-shelf
    classifier and every fine-tuned one shipped at each σ, scored on the same one-shot draws of the first
    `images` test images; multistep denoising (10 DDPM steps) at σ=1 on the first `multistep_images` as an
    exploration. Writes hallucination.csv (per class) and hallucination_detector.csv (per classifier)."""
    preset = get_preset("fashion-mnist")
    denoiser, base = preset.load_models()
    test = preset.load_dataset("test")
    classes = list(FASHION_MNIST_CLASSES)
    per_class, detector = [], []
    for sigma in sigmas:
        classifiers = {"none": base}
        for adapter in sorted(FINETUNED.glob(f"*-s{sigma:g}")):
            classifiers[adapter.name.removesuffix(f"-s{sigma:g}")] = load_classifier(str(adapter),
                                                                                     search_roots=SEARCH_ROOTS)
        for mode, count in (("one-shot", images), ("multistep", multistep_images if sigma == 1.0 else 0)):
            if not count:
                continue
            smooth = DenoisedSmoothing(denoiser, base, sigma, 256, mode=mode)
            picked = [(str(i), test.images[i], int(test.labels[i])) for i in range(min(count, len(test)))]
            frame = draws_frame(score_images(smooth, picked, draws, classifiers, seed), classes)
            rates, aucs = ((table.rename_axis("class").reset_index()
                            .melt(id_vars="class", var_name="classifier", value_name=name))
                           for table, name in ((class_rates(frame), "hallucination rate"),
                                               (class_aurocs(frame), "AUROC")))
            per_class.append(rates.merge(aucs, on=["class", "classifier"]).assign(sigma=sigma, mode=mode))
            detector.append(detector_summary(frame).rename_axis("classifier").reset_index().assign(sigma=sigma,
                                                                                                   mode=mode))
    per_class, detector = pd.concat(per_class), pd.concat(detector)
    RESULTS.mkdir(parents=True, exist_ok=True)
    per_class.to_csv(RESULTS / "hallucination.csv", index=False)
    detector.to_csv(RESULTS / "hallucination_detector.csv", index=False)
    (RESULTS / "hallucination.json").write_text(json.dumps(
        {"denoiser": in_repository(preset.denoiser), "classifier": in_repository(preset.classifier),
         "fine-tuned": in_repository(str(FINETUNED)),
         "dataset": preset.dataset, "split": "test", "images": images, "draws_per_image": draws,
         "multistep": {"sigma": 1.0, "images": multistep_images, "steps": 10, "sampler": "ddpm"},
         "seed": seed, "sigmas": list(sigmas)}, indent=2))
    return detector


def results_folder(n: int, adaptive: AdaptiveSettings | None) -> Path:
    """experiments/results for the main runs (fixed N); a subfolder for adaptive ones, e.g. n10000-adaptive."""
    return RESULTS if adaptive is None else RESULTS / f"n{n}-adaptive"


def run_all(stage: str = "all", steps: int | None = None, max_images: int = 500, n: int = 1000, threads: int = 0,
            precision: str = "auto", compile: str = "auto", sigmas=SIGMAS, methods=METHODS,
            runs: Path = Path("runs/finetune"), adaptive: bool = False) -> str:
    """Every stage, one σ at a time (its results are complete before the next σ starts);
    `precision`/`compile` (auto, or a precision / on, off) speed up certification (`compile` on also fine-tuning).
    `adaptive` certifies with adaptive CERTIFY, the report's radii as the radii of interest (for N beyond 1000,
    where its cap cuts them)."""
    auto = (precision == "auto", compile == "auto")
    fixed = Acceleration("fp32" if auto[0] else precision, compile=compile == "on")
    if threads:
        torch.set_num_threads(threads)
    if stage == "diagnose":
        run_diagnostics(sigmas)
    if stage == "hallucination":
        run_hallucination(sigmas)
    for sigma in sigmas:
        if stage in ("all", "finetune"):
            run_finetuning(methods, (sigma,), steps=steps, runs=runs, compile=compile == "on")
        if stage in ("all", "certify"):
            run_certification(methods, (sigma,), max_images=max_images, n=n, acceleration=fixed,
                              adaptive=AdaptiveSettings(default_tolerance(sigma), RADII) if adaptive else None,
                              auto=auto)
    return write_report()
