"""Multi-phase networks on one interface: x (B, P, C, D, H, W) → ModelOutput."""

from liverphase.models.registry import (
    ModelOutput,
    MultiPhaseModel,
    create_model,
    list_models,
    model_defaults,
    model_info,
    register_model,
)

__all__ = [
    "ModelOutput",
    "MultiPhaseModel",
    "create_model",
    "list_models",
    "model_defaults",
    "model_info",
    "register_model",
]
