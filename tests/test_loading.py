"""Model specs: parsed in one place, each source reaching its loader; adapters find their base via search roots."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from cadis.errors import CadisError
from cadis.models.loading import ModelSpec, load_classifier, parse_spec, save_classifier
from cadis.models.lora import apply_lora

from conftest import ROOT, make_tiny_vit


@pytest.fixture
def adapter_dir(tiny_classifier_dir, tmp_path) -> Path:
    """A LoRA adapter (non-trivial weights) on the tiny timm ViT."""
    clf = apply_lora(load_classifier(str(tiny_classifier_dir)))
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.1)
    return save_classifier(clf, tmp_path / "adapter", "adapter")


def test_each_source_parses_to_its_kind(tiny_classifier_dir, adapter_dir, tmp_path):
    cases = {
        "vit_tiny_patch16_224.augreg_in21k": ModelSpec("timm", "vit_tiny_patch16_224.augreg_in21k"),
        "hf-hub:org/name": ModelSpec("hf-hub", "org/name"),
        "hf:org/name": ModelSpec("hf", "org/name"),
        f"hf:{tiny_classifier_dir}": ModelSpec("hf", str(tiny_classifier_dir)),
        f"local-dir:{tiny_classifier_dir}": ModelSpec("local-dir", str(tiny_classifier_dir)),
        str(tiny_classifier_dir): ModelSpec("directory", str(tiny_classifier_dir)),
        str(adapter_dir): ModelSpec("adapter", str(adapter_dir)),
        f"local-dir:{adapter_dir}": ModelSpec("adapter", str(adapter_dir)),
        str(tmp_path / "missing"): ModelSpec("directory", str(tmp_path / "missing")),
    }
    for spec, want in cases.items():
        assert parse_spec(spec) == want, spec
        assert parse_spec(str(want)) == want  # the spec written back parses the same
    assert parse_spec("hf-hub:org/name").path is None and parse_spec(str(adapter_dir)).path == adapter_dir


def test_a_prefixed_spec_is_never_a_path():
    assert parse_spec("hf-hub:org/name").source == "hf-hub"  # the os.sep test once took it for a directory
    assert parse_spec("hf:./relative/dir").source == "hf"


def test_hf_hub_reaches_the_timm_hub_loader(monkeypatch):
    import timm

    calls, model = [], make_tiny_vit()

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return model

    monkeypatch.setattr(timm, "create_model", create_model)
    clf = load_classifier("hf-hub:org/name")
    assert calls == [("hf-hub:org/name", True)]
    assert clf.spec == "hf-hub:org/name" and clf(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_hf_reaches_the_transformers_loader(monkeypatch):
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    calls = []
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32, num_labels=3))

    def from_pretrained(name, **kwargs):
        calls.append(name)
        return (model, {"missing_keys": [], "mismatched_keys": []}) if kwargs.get("output_loading_info") else model

    def no_processor(name, **kwargs):
        raise OSError("no processor")

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", no_processor)
    clf = load_classifier("hf:org/name")
    assert calls == ["org/name"]
    assert clf.spec == "hf:org/name" and clf.input_size == (3, 16, 16) and clf.num_classes == 3


@pytest.mark.parametrize("spec", ["hf-hub:cadis-test/not-cached", "hf:cadis-test/not-cached"])
def test_an_uncached_hub_spec_offline_says_so(spec, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no request leaves the machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CadisError, match="offline") as e:
        load_classifier(spec)
    assert "unset HF_HUB_OFFLINE" in str(e.value) and "does not exist" not in str(e.value)


def test_an_adapter_copied_in_the_project_finds_its_base_through_the_search_roots(tiny_classifier_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_classifier_dir, project / "models" / "vit")
    clf = apply_lora(load_classifier(str(project / "models" / "vit")))
    saved = save_classifier(clf, project / "runs" / "one" / "model", "adapter", project_root=project)
    meta = json.loads((saved / "cadis_adapter.json").read_text())
    assert meta["base_classifier_in_project"] == "local-dir:models/vit"
    moved = shutil.copytree(saved, project / "elsewhere" / "adapter")  # a different depth: the relative base misses
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(load_classifier(str(moved), search_roots=[project])(x), load_classifier(str(saved))(x))
    with pytest.raises(CadisError, match="does not exist"):
        load_classifier(str(moved))


@pytest.mark.parametrize("package", ["src/cadis", "apps", "experiments"])
def test_no_import_cycle(package):
    """Function-level imports count: the graph is built from every import statement in the package."""
    root = ROOT / package
    modules = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(parts + ([node.module] if node.module else []))
                named = {f"{target}.{a.name}" for a in node.names}
                # `from pkg import sub` needs the submodule; its package is every submodule's parent anyway
                deps |= named if named <= modules.keys() else {target, *named}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = (deps & modules.keys()) - {name}

    def on_a_cycle(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return False

    assert [m for m in sorted(graph) if on_a_cycle(m)] == []
