"""Training: configs and profiles, the loop (single process or DDP), resumable state, bundles."""

from liverphase.train.bundle import load_bundle, read_bundle_meta, save_bundle
from liverphase.train.config import PROFILE_INPUT, PROFILES, TrainConfig, profile_config
from liverphase.train.recipe import model_factory_from_config
from liverphase.train.trainer import Trainer

__all__ = [
    "PROFILES",
    "PROFILE_INPUT",
    "Trainer",
    "TrainConfig",
    "load_bundle",
    "model_factory_from_config",
    "profile_config",
    "read_bundle_meta",
    "save_bundle",
]
