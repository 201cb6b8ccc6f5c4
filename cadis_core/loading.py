"""Model specs, and saving and loading classifiers: the one place that knows the spec prefixes.

A classifier spec is one of
- a timm model name (pretrained weights from the hub), e.g. `vit_base_patch16_224.augreg_in21k`;
- `hf-hub:ORG/NAME`: a timm model on the Hugging Face hub;
- `hf:ID_OR_PATH`: a transformers `AutoModelForImageClassification`;
- `local-dir:PATH` or a bare directory: timm's local-dir layout if its config.json has `architecture`,
  transformers if `model_type`;
- an adapter directory (`cadis_adapter.json` next to peft's `adapter_config.json`): a LoRA adapter on top
  of the base classifier it names.

`parse_spec` turns a spec into a `ModelSpec` (source, location) and `load_classifier` dispatches on the source,
the way timm's `parse_model_name` feeds its one builder. `save_classifier` writes an adapter or merged weights
that `load_classifier(directory)` reads back. An adapter names its base relative to itself and, when saved
with a `project_root`, relative to that root too; loading tries the adapter's directory, then the caller's
`search_roots`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import constants as hub_constants
from peft import PeftModel

from .classifier import ImageClassifier
from .errors import CadisError
from .lora import is_lora, merged_classifier

Source = Literal["timm", "hf-hub", "hf", "local-dir", "directory", "adapter"]
PREFIXES: dict[str, str] = {"hf-hub": "hf-hub:", "hf": "hf:", "local-dir": "local-dir:"}
LOCAL_SOURCES = ("local-dir", "directory", "adapter")
ADAPTER_META = "cadis_adapter.json"
PEFT_CONFIG = "adapter_config.json"
SAVE_FORMATS = ("adapter", "merged")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from (`source`) and where it is (`location`: a timm name, a hub id or a path)."""

    source: Source
    location: str

    def __str__(self) -> str:
        """The spec written back (bare paths for directories and adapters)."""
        return PREFIXES.get(self.source, "") + self.location

    @property
    def path(self) -> Path | None:
        """The directory a local spec names, existing or not; None for timm names and hub ids."""
        return Path(self.location) if self.source in LOCAL_SOURCES else None


def _split_prefix(spec: str) -> tuple[str | None, str]:
    """(source, rest) for a spec with a known prefix, else (None, spec). Textual only: no file system."""
    for source, prefix in PREFIXES.items():
        if spec.startswith(prefix):
            return source, spec[len(prefix):]
    return None, spec


def _is_adapter(path: Path) -> bool:
    return (path / ADAPTER_META).is_file() or (path / PEFT_CONFIG).is_file()


def parse_spec(spec: str | os.PathLike | ModelSpec) -> ModelSpec:
    """Parse a model spec (see the module docstring).

    A known prefix always wins, so `hf-hub:org/name` is never taken for a path. A bare string is a directory
    when it is one or looks like a path (a missing one fails when loaded, saying so), else a timm name. A
    denoiser's spec (a directory or a hub id, no prefix) reads as a directory: only its `path` is used."""
    if isinstance(spec, ModelSpec):
        return spec
    source, rest = _split_prefix(os.fspath(spec))
    if source in ("hf", "hf-hub"):
        return ModelSpec(source, rest)
    if source == "local-dir" or Path(rest).is_dir() or os.sep in rest or rest.startswith((".", "~")):
        return ModelSpec("adapter" if _is_adapter(Path(rest)) else (source or "directory"), rest)
    return ModelSpec("timm", rest)


def is_local(spec: str | os.PathLike | ModelSpec) -> bool:
    """Whether the spec names a directory that exists here (so loading it needs no hub)."""
    path = parse_spec(spec).path
    return path is not None and path.is_dir()


def missing_directory(spec: str | os.PathLike | ModelSpec) -> str | None:
    """The directory a spec plainly names (absolute, `./` or `~/`) when it does not exist, else None.

    Plain paths only, so it holds for denoisers too, whose `org/name` is a hub id."""
    parsed = parse_spec(spec)
    if parsed.path is None or not parsed.location.startswith(("/", ".", "~")):
        return None
    return None if parsed.path.expanduser().is_dir() else parsed.location


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE), so only cached models load."""
    # the hub libraries read the variable once, at import; a later change is honoured in the messages too
    env = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return bool(hub_constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _load_error(what: str, name: str, error: Exception, from_hub: bool, hint: str = "") -> CadisError:
    """A CadisError that says what to do; offline hub misses (OSError) say so rather than the library's text."""
    if from_hub and isinstance(error, OSError) and hub_offline():
        return CadisError(f"Could not load {what} {name!r}: the Hugging Face hub is offline (HF_HUB_OFFLINE=1) and "
                          "the model is not in the local cache. Go online once (unset HF_HUB_OFFLINE) to download "
                          "it, or give the directory of a saved copy.")
    first = (str(error).splitlines() or [type(error).__name__])[0]
    return CadisError(f"Could not load {what} {name!r}: {first}.{hint}")


# ---------------------------------------------------------------- loaders, one per source


def _load_timm(spec: ModelSpec) -> ImageClassifier:
    import timm

    name = str(spec)  # timm reads its own hf-hub: and local-dir: prefixes
    try:
        model = timm.create_model(name, pretrained=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise _load_error("timm model", name, e, spec.source != "local-dir",
                          " Use local-dir:PATH for a saved model, or go online for hub models "
                          "(unset HF_HUB_OFFLINE).") from e
    cfg = model.pretrained_cfg
    classes = None
    if spec.source == "local-dir":
        classes = json.loads((Path(spec.location) / "config.json").read_text()).get("label_names")
    return ImageClassifier(model.eval(), cfg["input_size"], cfg["mean"], cfg["std"], classes, name)


def _load_transformers(name: str) -> ImageClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _load_error("transformers model", name, e, not Path(name).is_dir()) from e
    mean, std, size = [0.5] * 3, [0.5] * 3, model.config.image_size
    with contextlib.suppress(OSError, ValueError):
        proc = AutoImageProcessor.from_pretrained(name)
        mean, std = proc.image_mean, proc.image_std
        size = proc.size.get("height", size) if isinstance(proc.size, dict) else size
    channels = getattr(model.config, "num_channels", 3)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return ImageClassifier(model.eval(), (channels, size, size), mean, std, classes, str(ModelSpec("hf", name)),
                           "logits")


def _load_directory(path: Path) -> ImageClassifier:
    """A timm local-dir or a transformers save_pretrained directory, told apart by its config.json."""
    if not path.is_dir():
        raise CadisError(f"Classifier directory {path} does not exist.")
    if not (path / "config.json").is_file():
        raise CadisError(f"Classifier directory {path} has no config.json; give a timm local-dir, a "
                         "transformers save_pretrained directory or a LoRA adapter directory.")
    if "model_type" in json.loads((path / "config.json").read_text()):
        return _load_transformers(str(path))
    return _load_timm(ModelSpec("local-dir", str(path)))


def load_classifier(spec: str | os.PathLike | ModelSpec, device: str | torch.device = "cpu",
                    search_roots: Sequence[str | os.PathLike] = ()) -> ImageClassifier:
    """Load a classifier from any spec (see the module docstring), in eval mode with gradients off.

    `search_roots`: where an adapter's base classifier is looked for after the adapter's own directory
    (callers pass the project root, so adapters copied into it still find their base)."""
    parsed = parse_spec(spec)
    if parsed.source == "hf":
        clf = _load_transformers(parsed.location)
    elif parsed.source == "adapter":
        clf = load_adapter(parsed.location, search_roots=search_roots)
    elif parsed.path is not None:
        clf = _load_directory(parsed.path)
    else:
        clf = _load_timm(parsed)
    return clf.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- adapters: save and load


def _relative(spec: ModelSpec, root: Path) -> ModelSpec:
    """A local spec made relative to `root`, so moving both together keeps it loadable; others unchanged."""
    if spec.path is not None and spec.path.is_dir():
        return replace(spec, location=os.path.relpath(spec.path.resolve(), root.resolve()))
    return spec


def save_adapter(classifier: ImageClassifier, directory: str | os.PathLike,
                 project_root: str | os.PathLike | None = None) -> Path:
    """Write the peft adapter and `cadis_adapter.json` (base spec, classes) to `directory`.

    A base inside `project_root` is also recorded relative to it, so an adapter copied elsewhere in the
    project (e.g. into assets/) still finds it when loaded with that root among the `search_roots`."""
    directory = Path(directory)
    if not is_lora(classifier):
        raise CadisError("Only a LoRA fine-tuned classifier can be saved as an adapter; use --save-as merged.")
    if not classifier.spec:
        raise CadisError("The base classifier has no spec to rebuild it from; use --save-as merged.")
    directory.mkdir(parents=True, exist_ok=True)
    classifier.model.save_pretrained(directory)
    base = parse_spec(classifier.spec)
    meta = {"base_classifier": str(_relative(base, directory)), "classes": classifier.classes}
    if project_root is not None and base.path is not None:
        root = Path(project_root).resolve()
        if base.path.resolve().is_dir() and base.path.resolve().is_relative_to(root):
            meta["base_classifier_in_project"] = str(_relative(base, root))
    (directory / ADAPTER_META).write_text(json.dumps(meta, indent=2))
    return directory


def _resolve_base(meta: dict, directory: Path, search_roots: Sequence[str | os.PathLike]) -> str:
    """The base spec, tried relative to the adapter, then relative to each search root."""
    spec = meta["base_classifier"]
    prefix = PREFIXES["local-dir"] if _split_prefix(spec)[0] == "local-dir" else ""
    in_project = meta.get("base_classifier_in_project", spec)
    for root, candidate in [(directory, spec), *((Path(r), in_project) for r in search_roots)]:
        source, rest = _split_prefix(candidate)
        path = Path(rest)
        if source not in ("hf", "hf-hub") and not path.is_absolute() and (root / path).is_dir():
            return prefix + str((root / path).resolve())
    return spec


def load_adapter(path: str | os.PathLike, merge: bool = True,
                 search_roots: Sequence[str | os.PathLike] = ()) -> ImageClassifier:
    """Rebuild the fine-tuned classifier: the base from `cadis_adapter.json`, then the peft adapter.

    With `merge`, LoRA is folded into the weights (a plain model, as fast as the base)."""
    directory = Path(path)
    meta_path = directory / ADAPTER_META
    if not meta_path.is_file():
        raise CadisError(f"{directory} has a peft adapter but no {ADAPTER_META} naming its base classifier; "
                         "it was not saved by cadis.")
    meta = json.loads(meta_path.read_text())
    base = load_classifier(_resolve_base(meta, directory, search_roots), search_roots=search_roots)
    try:
        model = PeftModel.from_pretrained(base.model, directory)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CadisError(f"Could not load the LoRA adapter in {directory}: {str(e).splitlines()[0]}") from e
    if merge:
        model = model.merge_and_unload()
    return ImageClassifier(model, base.input_size, base.mean.flatten().tolist(), base.std.flatten().tolist(),
                           meta.get("classes") or base.classes, str(directory), base.logits_attr)


# ---------------------------------------------------------------- merged weights, and either format


def save_merged(classifier: ImageClassifier, directory: str | os.PathLike) -> Path:
    """Write merged weights in the base model's layout (timm local-dir or transformers)."""
    directory = Path(directory)
    model = merged_classifier(classifier).model.cpu().eval()
    if hasattr(model, "pretrained_cfg"):
        import timm

        # The base's pretrained_cfg (mean/std, input size) travels with the model object.
        timm.models.save_for_hf(model, directory, safe_serialization=True,
                                model_config={"label_names": classifier.classes})
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
        base = parse_spec(classifier.spec)
        if base.source == "hf":  # the image processor (mean/std, size) lives next to the hub model
            from transformers import AutoImageProcessor

            with contextlib.suppress(OSError, ValueError):
                AutoImageProcessor.from_pretrained(base.location).save_pretrained(directory)
    else:
        raise CadisError(f"Cannot save a merged {type(model).__name__}; save it as an adapter instead.")
    return directory


def save_classifier(classifier: ImageClassifier, directory: str | os.PathLike, save_as: str = "adapter",
                    project_root: str | os.PathLike | None = None) -> Path:
    """Save as `adapter` or `merged`; either loads with `load_classifier(directory)`."""
    if save_as not in SAVE_FORMATS:
        raise CadisError(f"Unknown save format {save_as!r}; use 'adapter' or 'merged'.")
    if save_as == "adapter":
        return save_adapter(classifier, directory, project_root)
    return save_merged(classifier, directory)
