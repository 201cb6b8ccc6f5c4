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

Every loading failure is a `CadisError` that names the file and says what to do: an unreadable or non-object
JSON config, a truncated or empty safetensors file, missing or mismatched weights, bad adapter metadata. A model
whose weights are not all finite is refused when loaded and never saved (`check_finite`, which also checks a
saved directory without building the model).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import constants as hub_constants
from peft import PeftModel

from cadis.errors import CadisError
from cadis.files import write_atomic
from cadis.models.classifier import ImageClassifier
from cadis.models.lora import SplitQKV, fuse_qkv, is_lora, merged_classifier, needs_split, split_qkv
from cadis.models.model_files import RESTORE, check_finite, check_safetensors, first_line, read_json_object

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


def _label_names(config: dict, path: Path) -> list[str] | None:
    names = config.get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CadisError(f"{path / 'config.json'} has label_names that are not a list of strings; {RESTORE}.")
    return names


def _load_timm(spec: ModelSpec, config: dict | None = None) -> ImageClassifier:
    """A timm model: by name or hf-hub id (hub), or from a local-dir whose parsed config.json is `config`."""
    import timm

    name = str(spec)  # timm reads its own hf-hub: and local-dir: prefixes
    local = spec.source == "local-dir"
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # timm, torch and safetensors raise many types for a bad model
        if local:
            raise CadisError(f"Could not build the timm model in {spec.location} from its config.json and weights "
                             f"({first_line(e)}): they do not match; {RESTORE}.") from e
        raise _load_error("timm model", name, e, True, " Use local-dir:PATH for a saved model, or go online for "
                          "hub models (unset HF_HUB_OFFLINE).") from e
    cfg = model.pretrained_cfg
    classes = _label_names(config, Path(spec.location)) if local and config is not None else None
    return ImageClassifier(model.eval(), cfg["input_size"], cfg["mean"], cfg["std"], classes, name)


def _load_transformers(name: str) -> ImageClassifier:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    local = Path(name).is_dir()
    if local:
        read_json_object(Path(name) / "config.json")
        if (Path(name) / "model.safetensors").exists():
            check_safetensors(Path(name) / "model.safetensors")
    try:
        model, info = AutoModelForImageClassification.from_pretrained(name, output_loading_info=True)
    except Exception as e:  # transformers, torch and safetensors raise many types for a bad model
        if local:
            raise CadisError(f"Could not load the transformers model in {name} ({first_line(e)}); {RESTORE}.") from e
        raise _load_error("transformers model", name, e, True) from e
    missing = [*info.get("missing_keys", []), *(k[0] if isinstance(k, tuple) else k
                                                for k in info.get("mismatched_keys", []))]
    if missing:
        raise CadisError(f"The transformers model {name} lacks trained weights for {len(missing)} tensors (e.g. "
                         f"{sorted(missing)[0]}): its checkpoint is incomplete, or has no classification head. "
                         f"Give a model fine-tuned for image classification, or {RESTORE}.")
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
    config = read_json_object(path / "config.json")
    if "model_type" in config:
        return _load_transformers(str(path))
    if not isinstance(config.get("architecture"), str):
        raise CadisError(f"{path / 'config.json'} names neither an architecture (timm) nor a model_type "
                         f"(transformers); {RESTORE}.")
    weights = [path / w for w in ("model.safetensors", "pytorch_model.bin") if (path / w).is_file()]
    if not weights:
        raise CadisError(f"Classifier directory {path} has no model.safetensors (or pytorch_model.bin); {RESTORE}.")
    if weights[0].suffix == ".safetensors":
        check_safetensors(weights[0])
    return _load_timm(ModelSpec("local-dir", str(path)), config)


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
    check_finite(clf, str(parsed))
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
    write_atomic(directory / ADAPTER_META, json.dumps(meta, indent=2))
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
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    directory = Path(path)
    meta_path = directory / ADAPTER_META
    if not meta_path.is_file():
        raise CadisError(f"{directory} has a peft adapter but no {ADAPTER_META} naming its base classifier; "
                         "it was not saved by cadis.")
    fix = "restore the adapter directory, or re-save it with `cadis finetune`"
    meta = read_json_object(meta_path, fix)
    if not isinstance(meta.get("base_classifier"), str) or not meta["base_classifier"]:
        raise CadisError(f"{meta_path} names no base_classifier; {fix}.")
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CadisError(f"{meta_path} has classes that are not a list of strings; {fix}.")
    if "peft_type" not in read_json_object(directory / PEFT_CONFIG, fix):
        raise CadisError(f"{directory / PEFT_CONFIG} has no peft_type; {fix}.")
    weights = directory / "adapter_model.safetensors"
    check_safetensors(weights, fix)
    base_spec = _resolve_base(meta, directory, search_roots)
    base_path = parse_spec(base_spec).path
    if base_path is not None and not base_path.is_dir():
        roots = "".join(f", {r}" for r in search_roots)
        raise CadisError(f"The base classifier {meta['base_classifier']} of the adapter {directory} does not exist "
                         f"(looked relative to {directory}{roots}); put the base model there, or load the adapter "
                         "from the project that holds it.")
    base = load_classifier(base_spec, search_roots=search_roots)
    if needs_split(read_json_object(directory / PEFT_CONFIG, fix).get("target_modules")) and not any(
            isinstance(m, SplitQKV) for m in base.model.modules()):
        split_qkv(base.model)  # an adapter of q and v (lora_targets="q,v") needs the fused qkv split first
    try:
        with warnings.catch_warnings():  # peft warns of missing keys; they are checked below
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(base.model, directory)
    except KeyError as e:
        raise CadisError(f"{weights} lacks the tensor {e.args[0] if e.args else e}; {fix}.") from e
    except Exception as e:  # peft, torch and safetensors raise many types for a bad adapter
        raise CadisError(f"Could not load the LoRA adapter in {directory} onto its base {meta['base_classifier']} "
                         f"({first_line(e)}); {fix}.") from e
    with safe_open(str(weights), "pt") as f:
        saved = set(f.keys())
    missing = sorted(set(get_peft_model_state_dict(model)) - saved)
    if missing:
        raise CadisError(f"{weights} lacks {len(missing)} of the adapter's tensors (e.g. {missing[0]}); {fix}.")
    if merge:
        model = fuse_qkv(model.merge_and_unload())
    return ImageClassifier(model, base.input_size, base.mean.flatten().tolist(), base.std.flatten().tolist(),
                           classes or base.classes, str(directory), base.logits_attr)


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
    check_finite(classifier, f"to be saved in {directory}")
    if save_as == "adapter":
        return save_adapter(classifier, directory, project_root)
    return save_merged(classifier, directory)
