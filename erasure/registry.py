"""The method registry: one `register(...)` call per method (erasure/methods.py holds them).

A method is a config dataclass (a subclass of EraseConfig) and a function
`erase_pipeline(pipeline, config, session) -> (record, artifacts)` that changes the pipeline in
place. The function is named by import path and imported on first use, so listing methods,
building the CLI and checking a config never import torch. The CLI's options, `erase()`, the
pipeline's `.erase(method=...)`, erasure.json and the model card all read this registry.
"""

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable

from .config import EraseConfig
from .errors import EraseError, shorten

_METHODS: dict = {}


@dataclass(frozen=True)
class Method:
    name: str
    config: type  # the EraseConfig subclass
    erase_pipeline: str | Callable  # "package.module:function", or the function itself
    title: str  # for model cards and reports
    citation: str  # BibTeX of the paper

    def load_erase_pipeline(self) -> Callable:
        if callable(self.erase_pipeline):
            return self.erase_pipeline
        module, _, function = self.erase_pipeline.partition(":")
        return getattr(importlib.import_module(module), function)


def register(name: str, config: type, erase_pipeline: str | Callable, *, title: str, citation: str) -> Method:
    """Make a method available to `sd-erase erase --method NAME`, `erase()` and the model card."""
    if name in _METHODS:
        raise ValueError(f"an erasure method named {name!r} is already registered ({_METHODS[name].config.__name__})")
    if not (dataclasses.is_dataclass(config) and issubclass(config, EraseConfig)):
        raise TypeError(f"the config of {name!r} must be a dataclass subclassing EraseConfig, got {config!r}")
    if any(m.config is config for m in _METHODS.values()):
        raise ValueError(f"{config.__name__} is already the config of another method: subclass it for {name!r}")
    config.method = name
    _METHODS[name] = Method(name, config, erase_pipeline, title, citation)
    return _METHODS[name]


def unregister(name: str) -> None:
    """Remove a method (e.g. one a test or a notebook registered for a while)."""
    method = _METHODS.pop(name)
    method.config.method = ""


def methods() -> dict[str, Method]:
    """Every registered method by name, the built-in ones first."""
    importlib.import_module(f"{__package__}.methods")  # its import registers the built-in methods

    return dict(_METHODS)


def get_method(name: str) -> Method:
    registered = methods()
    if name not in registered:
        raise EraseError(f"unknown method {shorten(name)}: choose one of {', '.join(registered)}")
    return registered[name]


def method_of(config: EraseConfig) -> Method:
    """The registered method `config` belongs to."""
    method = methods().get(type(config).method)
    if method is None or method.config is not type(config):
        raise EraseError(f"{type(config).__name__} is not the config of a registered method: register it with "
                         "sd_erasure.register_method(...)")
    return method
