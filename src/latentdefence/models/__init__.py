"""Classifiers from both papers, by name, with named layer taps."""

from . import architectures as _architectures  # noqa: F401  (registers the models)
from .registry import create_model, list_models, register_model
from .taps import HookedModel, StagedModel, TapModules, TappedModel, as_tapped

__all__ = ["HookedModel", "StagedModel", "TapModules", "TappedModel", "as_tapped", "create_model", "list_models",
           "register_model"]
