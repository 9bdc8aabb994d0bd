"""Experiment options from the command line: profile + YAML config + explicit flags, flags winning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from liverphase.errors import ConfigError

CONFIG_SECTIONS = ("train", "preprocess", "model_options", "locator")


def parse_model_options(options: list[str]) -> dict[str, Any]:
    """`key=value` pairs into a dict, values parsed as YAML scalars (numbers, true/false, lists)."""
    out: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}", "--option")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_experiment_config(config: Path | None) -> dict[str, Any]:
    """The YAML config's sections (train, preprocess, model_options, locator); {} without a file."""
    if config is None:
        return {}
    if not config.is_file():
        raise ConfigError("config file not found", config)
    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({str(exc).splitlines()[0]})", config) from None
    if not isinstance(data, dict) or set(data) - set(CONFIG_SECTIONS):
        raise ConfigError(f"expected a mapping with sections {', '.join(CONFIG_SECTIONS)}", config)
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"section {name!r} must be a mapping, got {section!r}", config)
    _check_sections(data, config)
    return data


# TrainConfig fields set from the command line: in the train section `model` silently replaced
# --model, and `model_options` was a TypeError traceback
_SET_ELSEWHERE = {"model": "--model", "model_options": "the model_options section or -o"}


def _check_sections(data: dict[str, Any], path: Path) -> None:
    """Unknown keys, wrong types and out-of-range training values of the YAML's sections, named by
    the YAML file and section: merged with a profile later, they would be blamed on the profile."""
    from liverphase.preprocess.config import PreprocessConfig
    from liverphase.train.config import TrainConfig
    from liverphase.train.locator_config import locator_settings

    train = data.get("train") or {}
    for key, flag in _SET_ELSEWHERE.items():
        if key in train:
            raise ConfigError(f"train: {key!r} is set by {flag}, not in this section", path)
    values = TrainConfig.coerce_fields(train, source=f"{path}: train")
    PreprocessConfig.coerce_fields(data.get("preprocess") or {}, source=f"{path}: preprocess")
    locator_settings(data.get("locator"), path)  # the whole section: it has no profile to merge
    # ranges on the defaults; `init` may still come from --init, so a stand-in keeps its one
    # cross-field check (freeze_epochs needs init) for the merged config
    try:
        TrainConfig(**{**values, "init": values.get("init") or "--init"}).validate()
    except ConfigError as exc:
        if exc.path in values:  # a value the YAML gave, not a default
            raise ConfigError(f"train: {exc.path}: {exc.problem}", path) from None


def config_overrides(
    config: Path | None = None, option: list[str] | None = None, no_register: bool = False
) -> dict[str, Any]:
    """The YAML config and `-o key=value` flags as make_experiment's model_options,
    preprocess_overrides and training keywords (what every run of a command shares)."""
    data = read_experiment_config(config)
    pre = dict(data.get("preprocess") or {})
    if no_register:
        pre["register"] = False
    return {
        **dict(data.get("train") or {}),
        "model_options": {
            **(data.get("model_options") or {}),
            **parse_model_options(option or []),
        },
        "preprocess_overrides": pre,
    }


def dataset_modality(dataset: Path | None) -> str | None:
    """ "ct" or "mri" from a dataset's dataset.json, or None when it cannot be read (opening the
    dataset reports that problem later, with its own message)."""
    from liverphase.errors import DatasetError
    from liverphase.io.nifti import dataset_json_modality

    if dataset is None:
        return None
    path = Path(dataset) / "dataset.json"
    try:
        return dataset_json_modality(json.loads(path.read_text(encoding="utf-8-sig")), path)
    except (OSError, ValueError, AttributeError, DatasetError):
        return None


def experiment_kwargs(
    model: str,
    profile: str | None,
    config: Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    phases: str | None = None,
    in_channels: int = 3,
    option: list[str] | None = None,
    no_register: bool = False,
    loss: str | None = None,
    label_fraction: float | None = None,
    recipe: str | None = None,
    dataset: Path | None = None,
) -> dict[str, Any]:
    """Recipe + profile + YAML config + explicit flags (later wins) into make_experiment's keyword
    arguments; `recipe` None is the model's default recipe for the modality of `dataset` (its
    dataset.json), `profile` None the recipe's or cpu."""
    from liverphase.recipes import get_recipe, recipe_kwargs

    chosen = get_recipe(model, recipe, dataset_modality(dataset))
    base = recipe_kwargs(chosen)
    shared = config_overrides(config, option, no_register)
    for key in ("model_options", "preprocess_overrides"):
        shared[key] = {**base.pop(key), **shared[key]}
    shared = {**base, **shared}
    flags = (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("lr", lr),
        ("loss", loss),
        ("label_fraction", label_fraction),
    )
    shared.update({k: v for k, v in flags if v is not None})
    return {
        "model": model,
        "profile": profile or chosen.profile or "cpu",
        "phases": [p.strip() for p in phases.split(",")] if phases else None,
        "in_channels": in_channels,
        **shared,
    }
