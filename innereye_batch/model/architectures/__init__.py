"""Registry of network architectures by name: ``build_network(spec, in_channels, out_channels)``.

An architecture is a builder function ``builder(in_channels, out_channels, **params) -> torch.nn.Module``
registered with ``@register_architecture("Name")``. Its keyword parameters are the hyper-parameters an inference
block may set under ``architecture``; ``architecture_parameters`` lists them so a model folder can be validated
without building anything. Names are matched case-insensitively. Importing this package imports torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from innereye_batch.model.spec import ArchitectureSpec

Builder = Callable[..., torch.nn.Module]
SizeMultiple = Callable[[Mapping[str, Any]], tuple[int, int, int]]
"""Per (z, y, x) axis: the multiple every padded input size must have, from the hyper-parameters."""


@dataclass(frozen=True)
class RegisteredArchitecture:
    """One registered architecture: its builder, accepted hyper-parameters and input-size rule."""

    name: str
    builder: Builder
    required: frozenset[str]
    optional: frozenset[str]
    size_multiple: SizeMultiple | None = None
    """Padded input sizes must be multiples of ``size_multiple(params)``, per (z, y, x) axis; None means any size
    works."""


ARCHITECTURES: dict[str, RegisteredArchitecture] = {}
"""Registered architectures, keyed by lower-case name."""


def register_architecture(name: str, *, size_multiple: SizeMultiple | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(in_channels, out_channels, **params)`` under ``name``."""

    def decorate(builder: Builder) -> Builder:
        parameters = list(inspect.signature(builder).parameters.values())[2:]
        required = frozenset(p.name for p in parameters if p.default is inspect.Parameter.empty)
        optional = frozenset(p.name for p in parameters if p.default is not inspect.Parameter.empty)
        key = name.lower()
        if key in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        ARCHITECTURES[key] = RegisteredArchitecture(name, builder, required, optional, size_multiple)
        return builder

    return decorate


def find_architecture(name: str) -> RegisteredArchitecture | None:
    """The registered architecture called ``name`` (any case), or None."""
    return ARCHITECTURES.get(name.lower())


def architecture_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(entry.name for entry in ARCHITECTURES.values())


def check_architecture_params(name: str, params: Mapping[str, Any]) -> list[str]:
    """Problems with ``params`` for architecture ``name`` (unknown name, missing or unknown parameters)."""
    entry = find_architecture(name)
    if entry is None:
        return [f"unknown architecture {name!r}; registered: {', '.join(architecture_names())}"]
    problems = [f"missing parameter {p!r}" for p in sorted(entry.required - set(params))]
    known = entry.required | entry.optional
    problems += [f"unknown parameter {p!r} (accepted: {', '.join(sorted(known))})" for p in sorted(set(params) - known)]
    if not problems:  # values of the wrong type or range: built once without memory (torch's meta device)
        import torch

        from innereye_batch.errors import InnerEyeBatchError

        try:
            with torch.device("meta"):
                entry.builder(1, 2, **dict(params))
            if entry.size_multiple is not None:
                entry.size_multiple(params)
        except InnerEyeBatchError:  # a missing optional dependency (torchvision): said when the network is built
            pass
        except Exception as error:  # a builder raises what its layers raise: TypeError, ValueError, RuntimeError...
            problems.append(f"its parameters {dict(params)} do not build the network: {type(error).__name__}: {error}")
    return problems


def size_multiple_of(spec: ArchitectureSpec) -> tuple[int, int, int]:
    """The multiple every padded input size must have for this architecture, per (z, y, x) axis (1 when
    unconstrained)."""
    entry = find_architecture(spec.name)
    if entry is None or entry.size_multiple is None:
        return (1, 1, 1)
    return entry.size_multiple(spec.params)


def build_network(spec: ArchitectureSpec, in_channels: int, out_channels: int) -> torch.nn.Module:
    """Build the registered architecture ``spec.name`` with ``spec.params`` (weights freshly initialised)."""
    problems = check_architecture_params(spec.name, spec.params)
    if problems:
        raise ValueError(f"architecture {spec.name}: " + "; ".join(problems))
    entry = ARCHITECTURES[spec.name.lower()]
    return entry.builder(in_channels, out_channels, **dict(spec.params))


# Built-in architectures register themselves on import.
from innereye_batch.model.architectures import cnn2d, torchvision_nets, unet3d  # noqa: E402, F401
