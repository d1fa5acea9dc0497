"""Codecs: one file per codec, each registered by name. See ``base`` for the interface."""

from . import identity, int8, zstd  # noqa: F401  (importing registers them)
from .base import ByteStage, LayerContext, LayerKV, Param, Pipeline, TensorCodec
from .registry import build, describe, known_names, register

__all__ = ["ByteStage", "LayerContext", "LayerKV", "Param", "Pipeline", "TensorCodec",
           "build", "describe", "known_names", "register"]
