"""Codecs: one file per codec, each registering itself with ``@register``. See ``base``.

Every module in this package is imported here, so adding a codec is one new file (its class
decorated with ``@register``) plus its tests; shared machinery lives in the modules listed in
``_SUPPORT``.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import ByteStage, LayerContext, LayerKV, Param, Pipeline, TensorCodec
from .registry import build, describe, known_names, register

_SUPPORT = {"base", "registry", "quant", "bitpack", "selection"}
for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _module not in _SUPPORT and not _module.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ByteStage", "LayerContext", "LayerKV", "Param", "Pipeline", "TensorCodec",
           "build", "describe", "known_names", "register"]
