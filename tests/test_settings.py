"""Settings declared once: the finetune command's flags and the library's checks come from FinetuneConfig."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cadis.errors import CadisError
from cadis.settings import add_flags, from_flags, settings
from cadis.training.finetune_config import FinetuneConfig


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, FinetuneConfig)
    return parser.parse_args(argv)


def test_every_field_is_declared_and_has_a_flag_with_its_help():
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert set(settings(FinetuneConfig)) == fields  # nothing declared outside the one place
    parser = argparse.ArgumentParser()
    add_flags(parser, FinetuneConfig)
    dests = {a.dest: a for a in parser._actions}
    for name, (spec, _) in settings(FinetuneConfig).items():
        assert name in dests and dests[name].help.startswith(spec.help.split("(")[0].strip()[:20]), name


def test_flags_left_unset_give_the_library_defaults_and_set_ones_reach_the_config():
    computed = {"out": "runs/x", "sigma": 0.25, "lr": 1e-3, "save_as": "adapter"}
    assert from_flags(FinetuneConfig, _parse(), **computed) == FinetuneConfig(**computed)
    config = from_flags(FinetuneConfig, _parse("--full", "--no-warm-start", "--lora-qv", "--weight-decay-end", "0.1",
                                               "--lr", "3e-4", "--save-as", "merged"), **computed)
    assert not config.lora and not config.warm_start and config.lora_qv and config.weight_decay_end == 0.1
    assert config.lr == 3e-4 and config.save_as == "merged"  # a flag given wins over the computed default


@pytest.mark.parametrize("change, message", [
    ({"min_lr": 0.01}, "--min-lr must be a finite number in [0, 0.001] (got 0.01); it must not exceed --lr"),
    ({"subset": 4}, "--subset must be an integer >= 32 (got 4); it must hold at least --batch-size (32)"),
    ({"layer_decay": 1.5}, "--layer-decay must be a finite number in (0, 1]"),
    ({"weight_decay_end": float("nan")}, "--weight-decay-end must be a finite number"),
    ({"seed": 2**32}, "--seed must be an integer from 0 to 4,294,967,295"),
    ({"precision": "fp8"}, "--precision must be one of fp32, bf16, fp16"),
])
def test_the_declared_constraints_refuse_with_the_flag_named(change, message):
    with pytest.raises(CadisError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        dataclasses.replace(FinetuneConfig(), **change).validate()


def test_a_constraint_that_depends_on_another_setting_is_skipped_when_it_is_off():
    FinetuneConfig(lora=False, lora_r=0, save_as="merged").validate()  # no LoRA: its rank is not used
    with pytest.raises(CadisError, match="--lora-r must be an integer >= 1"):
        FinetuneConfig(lora_r=0).validate()
