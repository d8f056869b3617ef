"""Detect a checkpoint's format from its content, load it safely, and build the package's networks from it.

Formats (detected from the bytes, never from the file name):

- ``lightning``: InnerEye's PyTorch-Lightning ``.ckpt``, a dict whose ``state_dict`` keys carry a ``model.`` prefix.
- ``legacy``: InnerEye's older ``<epoch>_checkpoint.pth.tar``, a dict with ``epoch`` and a bare ``state_dict``.
  One trained with a mean teacher also holds ``mean_teacher_state_dict``: its weights are the ones loaded, as
  InnerEye's inference uses them (``LoadedCheckpoint.mean_teacher``).
- ``state_dict``: a plain mapping of parameter names to tensors.
- ``torchscript``: a ``torch.jit.save`` archive.
- ``torch_export``: a ``torch.export.save`` program (``.pt2``).
- ``pickled_module``: a whole pickled ``nn.Module`` (only ever loads with ``trust_checkpoint``).

Safety: pickles load with ``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only and
never calls arbitrary code. A pickle that needs more is refused with ``CheckpointError`` unless
``trust_checkpoint`` is set. TorchScript and ``torch.export`` archives are refused without ``trust_checkpoint``
too: they cannot run arbitrary Python, but they are programs (PyTorch's security policy says to treat models
as code: a TorchScript archive carries source that is compiled on load), and their deserialisers are a far larger
attack surface than the weights-only unpickler. With trust, only their weights are used: ``load_networks``
copies the archive's state dict into our own registered architecture (strictly), so the computation that runs
is always ours and the archive's graph never runs -- unless the package names the architecture
``from_checkpoint``, which runs the archive's own program.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from innereye_batch.errors import CheckpointError
from innereye_batch.files import sha256_file

if TYPE_CHECKING:
    import torch

    from innereye_batch.model.spec import ModelPackage

MEAN_TEACHER_KEY = "mean_teacher_state_dict"
"""InnerEye's ``MEAN_TEACHER_STATE_DICT_KEY``: a legacy checkpoint's mean-teacher weights, which inference uses."""
CheckpointFormat = Literal["lightning", "legacy", "state_dict", "torchscript", "torch_export", "pickled_module"]
FROM_CHECKPOINT = "from_checkpoint"
"""Architecture name that runs a TorchScript / torch.export archive's own program instead of a registered one."""

_TRUST_HINT = (
    "Only if you trust whoever produced this file, run again with --trust-checkpoint "
    "(Python: trust_checkpoint=True); better, re-save it as a plain state dict "
    "(torch.save(model.state_dict(), path))."
)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What one checkpoint file holds: its format, the network weights (bare names), and a module if any."""

    path: Path
    format: CheckpointFormat
    state_dict: dict[str, Any]
    """Parameter and buffer tensors keyed by the network's own names (``model.`` prefix removed)."""
    module: Any = None
    """The deserialised program (TorchScript module or ``torch.export`` program's module), or a pickled module."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """``epoch`` and ``global_step`` where the checkpoint records them."""
    mean_teacher: bool = False
    """True when ``state_dict`` is a legacy checkpoint's mean teacher (``mean_teacher_state_dict``), not its
    student ``state_dict``."""


def _archive_kind(path: Path) -> str:
    """``torchscript``, ``torch_export`` or ``pickle`` from a zip archive's member names; ``pickle`` if not zip."""
    if not zipfile.is_zipfile(path):
        return "pickle"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    if any(
        name.endswith("/archive_format") or "serialized_exported_program" in name or "/models/" in name
        for name in names
    ):
        return "torch_export"
    return "pickle"


def _refuse_program(path: Path, kind: str) -> CheckpointError:
    what = "a TorchScript archive" if kind == "torchscript" else "a torch.export program (.pt2)"
    return CheckpointError(
        f"checkpoint {path}: is {what}, which is a program, not just weights; it is not loaded by default. "
        + _TRUST_HINT
    )


def _torch_load_safely(path: Path, trust_checkpoint: bool) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as error:
        if trust_checkpoint:
            raise CheckpointError(f"checkpoint {path}: cannot be unpickled: {error}") from error
        try:
            needed: list[str] | None = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # the listing is a courtesy; the refusal stands either way
            needed = None
        if needed:
            raise CheckpointError(
                f"checkpoint {path}: refused: unpickling it needs more than tensors and plain containers "
                f"(it calls {', '.join(needed[:8])}), so it could run arbitrary code. " + _TRUST_HINT
            ) from error
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path}: cannot be read with the safe (weights-only) loader: {first_line}. If it is a "
            f"checkpoint that needs more than weights: " + _TRUST_HINT
        ) from error
    except Exception as error:  # torch.load raises many types for damaged or foreign files
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from error


def _is_tensor_mapping(value: Any) -> bool:
    import torch

    return (
        isinstance(value, dict)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_common_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _classify_pickle(path: Path, content: Any) -> LoadedCheckpoint:
    import torch

    if isinstance(content, torch.nn.Module):
        return LoadedCheckpoint(path, "pickled_module", dict(content.state_dict()), module=content)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        state = content["state_dict"]
        metadata = {k: content[k] for k in ("epoch", "global_step") if isinstance(content.get(k), int)}
        model_keys = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        if not _is_tensor_mapping(model_keys or state):
            raise CheckpointError(f"checkpoint {path}: its 'state_dict' holds something other than named tensors")
        if model_keys:
            return LoadedCheckpoint(path, "lightning", model_keys, metadata=metadata)
        if MEAN_TEACHER_KEY in content:
            teacher = content[MEAN_TEACHER_KEY]
            if not _is_tensor_mapping(teacher):
                raise CheckpointError(
                    f"checkpoint {path}: its '{MEAN_TEACHER_KEY}' (the mean teacher's weights, which InnerEye's "
                    "inference uses) holds something other than named tensors"
                )
            weights = _strip_common_prefix(teacher, "module.")
            return LoadedCheckpoint(path, "legacy", weights, metadata=metadata, mean_teacher=True)
        return LoadedCheckpoint(path, "legacy", _strip_common_prefix(state, "module."), metadata=metadata)
    if _is_tensor_mapping(content):
        return LoadedCheckpoint(path, "state_dict", _strip_common_prefix(content, "module."))
    keys = sorted(content)[:10] if isinstance(content, dict) else type(content).__name__
    raise CheckpointError(
        f"checkpoint {path}: unrecognised content ({keys}); expected a Lightning checkpoint (dict with "
        f"'state_dict' keyed 'model.<name>'), an InnerEye .pth.tar (dict with 'epoch' and 'state_dict'), a plain "
        f"state dict, a TorchScript archive or a torch.export program"
    )


def load_checkpoint(path: Path, *, trust_checkpoint: bool = False) -> LoadedCheckpoint:
    """Load one checkpoint file safely, detecting its format from its content."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    kind = _archive_kind(path)
    if kind in ("torchscript", "torch_export"):
        if not trust_checkpoint:
            raise _refuse_program(path, kind)
        try:
            if kind == "torchscript":
                module = torch.jit.load(str(path), map_location="cpu")
                return LoadedCheckpoint(path, "torchscript", dict(module.state_dict()), module=module)
            program = torch.export.load(path)
            module = program.module()
        except Exception as error:
            raise CheckpointError(f"checkpoint {path}: cannot load the {kind} archive: {error}") from error
        _program_to_inference(module, path)
        return LoadedCheckpoint(path, "torch_export", dict(program.state_dict), module=module)
    return _classify_pickle(path, _torch_load_safely(path, trust_checkpoint))


_SWITCHES: dict[str, tuple[int, str, int | None]] = {
    "batch_norm.default": (5, "training", 3),
    "instance_norm.default": (5, "use_input_stats", 3),
    "dropout.default": (2, "train", None),
    "feature_dropout.default": (2, "train", None),
    "alpha_dropout.default": (2, "train", None),
    "feature_alpha_dropout.default": (2, "train", None),
}
"""Graph operators of an exported program that compute otherwise in training: where their flag is (position,
keyword), and for the norms where their running mean is (without one, a norm uses the batch's statistics in
eval mode too: its flag stays)."""
_REFUSED = ("_native_batch_norm_legit_functional", "_native_batch_norm_legit.default", "native_dropout", "bernoulli")
_RANDOM = "rand"
"""Decomposed training-mode operators, and random draws (``rand``, ``randn``...): no flag switches them off."""


def _program_to_inference(module: Any, path: Path) -> None:
    """An exported program's norms and dropouts switched to inference, as ``eval()`` switches a module's (a
    program has no such switch: one exported in training mode normalised each batch by its own statistics and
    dropped activations at random, so a patch's posteriors depended on its batch and on chance). CheckpointError
    for a training-only or random operator that cannot be switched."""

    def argument(node: Any, index: int, keyword: str) -> Any:
        return node.args[index] if len(node.args) > index else node.kwargs.get(keyword)

    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target).removeprefix("aten.")
        if name.startswith(_REFUSED) or name.startswith(_RANDOM):
            raise CheckpointError(
                f"checkpoint {path}: the program was exported in training mode or draws random numbers ({name}); "
                "export it from a module in eval mode (model.eval())"
            )
        if name not in _SWITCHES:
            continue
        index, keyword, statistics = _SWITCHES[name]
        if statistics is not None and argument(node, statistics, "running_mean") is None:
            continue  # no running statistics: the batch's are what eval mode uses too
        if len(node.args) > index and node.args[index] is True:
            node.args = (*node.args[:index], False, *node.args[index + 1 :])
        if node.kwargs.get(keyword) is True:
            node.kwargs = {**node.kwargs, keyword: False}
    module.recompile()


def to_eval_mode(network: Any) -> None:
    """``network.eval()`` where the network has that switch: a torch.export program has none (``eval()`` raises),
    and needs none: ``load_checkpoint`` switched its norms and dropouts to inference (``_program_to_inference``)."""
    with contextlib.suppress(NotImplementedError, RuntimeError):
        network.eval()


def _mismatch_report(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key}: checkpoint {tuple(found[key].shape)} vs network {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key].shape)
    ]

    def listing(title: str, items: list[str]) -> list[str]:
        if not items:
            return []
        more = f" ... and {len(items) - 6} more" if len(items) > 6 else ""
        return [f"{title} ({len(items)}): {', '.join(items[:6])}{more}"]

    return listing("missing keys", missing) + listing("unexpected keys", unexpected) + listing("shape mismatch", shapes)


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` holding a NaN or an infinity."""
    import torch

    return [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def weights_digest(state: dict[str, Any]) -> str:
    """Hex sha256 of the weights themselves: every tensor's name, dtype, shape and bytes, in name order (two files
    of the same weights agree whatever else they hold or however they were saved)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        if not isinstance(state[name], torch.Tensor):  # a module's extra state: an object, not weights
            digest.update(f"{name}\0".encode() + _object_bytes(state[name]) + b"\0")
            continue
        tensor = state[name].detach().cpu()
        tensor = (tensor.to_dense() if tensor.layout != torch.strided else tensor).contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # bytes, without a copy: any dtype (bfloat16 has no numpy type) viewed as uint8
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def _object_bytes(value: Any) -> bytes:
    """An extra-state object's content as bytes: its pickle (a repr may hold a memory address, which differs
    between two loads of the same object), else its type's name."""
    import pickle

    try:
        return pickle.dumps(value, protocol=4)
    except Exception:  # unpicklable: the digest then tells members apart by their tensors alone
        return type(value).__qualname__.encode()


def load_networks(
    package: ModelPackage, *, device: torch.device | str = "cpu", trust_checkpoint: bool = False
) -> list[torch.nn.Module]:
    """One network per checkpoint of the package, weights loaded strictly, in eval mode, on ``device``.

    A weight that is NaN or infinite refuses the checkpoint: it would turn every output NaN, which argmax reads
    as background (an empty segmentation). A file whose sha256 is no longer the package's (replaced since the
    folder was read) is refused too: the run's records name the package's checksums. Two members of the same
    weights (``weights_digest``) are refused: the ensemble's mean would count that member twice."""
    networks = []
    in_channels = len(package.channels)
    by_weights: dict[str, Path] = {}
    for ref in package.checkpoints:
        loaded = load_checkpoint(ref.path, trust_checkpoint=trust_checkpoint)
        if sha256_file(ref.path) != ref.sha256:  # after loading: what was loaded is what the records name
            raise CheckpointError(
                f"checkpoint {ref.path}: changed since the model folder was read (sha256 {ref.sha256[:12]} then): "
                "the outputs would name other weights than those that made them; run again"
            )
        broken = non_finite_tensors(loaded.state_dict)
        if broken:
            more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            raise CheckpointError(f"checkpoint {ref.path}: NaN or infinite weights in {', '.join(broken[:3])}{more}")
        if len(package.checkpoints) > 1:
            digest = weights_digest(loaded.state_dict)
            if digest in by_weights:
                raise CheckpointError(
                    f"checkpoint {ref.path}: holds the same weights as checkpoint {by_weights[digest]} (weights "
                    f"sha256 {digest[:12]}): the ensemble's mean would count that member twice"
                )
            by_weights[digest] = ref.path
        if package.architecture.name == FROM_CHECKPOINT:
            if loaded.module is None:
                raise CheckpointError(
                    f"checkpoint {ref.path}: architecture '{FROM_CHECKPOINT}' needs a TorchScript or torch.export "
                    f"archive, but this is a {loaded.format} checkpoint holding only weights"
                )
            network = loaded.module
            to_eval_mode(network)
            networks.append(network.to(device))
            continue
        else:
            network = _network_for(package, in_channels, ref.path, loaded)
            network.load_state_dict(loaded.state_dict, strict=True)
        networks.append(network.to(device).eval())
    return networks


def _network_for(package: ModelPackage, in_channels: int, path: Path, loaded: LoadedCheckpoint) -> torch.nn.Module:
    """The package's network, built once its shapes are known to match the checkpoint's: they are compared on
    the meta device first (no memory), so an architecture that does not fit its weights is refused before it is
    allocated (a mistyped width of a million channels asked for 100 TB)."""
    import torch

    from innereye_batch.model.architectures import build_network

    def refuse(problems: list[str]) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {path} ({loaded.format}) does not match architecture {package.architecture.name} "
            f"{dict(package.architecture.params)} with {in_channels} input channel(s) and {package.num_outputs} "
            "outputs: " + "; ".join(problems)
        )

    try:
        with torch.device("meta"):
            shapes = dict(build_network(package.architecture, in_channels, package.num_outputs).state_dict())
    except Exception:  # an architecture that computes while it is built: compared once built below
        shapes = {}
    if shapes and (problems := _mismatch_report(shapes, loaded.state_dict)):
        raise refuse(problems)
    try:
        network = build_network(package.architecture, in_channels, package.num_outputs)
    except (RuntimeError, MemoryError) as error:
        raise CheckpointError(
            f"checkpoint {path}: architecture {package.architecture.name} {dict(package.architecture.params)} "
            f"cannot be built: {type(error).__name__}: {error}"
        ) from error
    problems = _mismatch_report(dict(network.state_dict()), loaded.state_dict)
    if problems:
        raise refuse(problems)
    return network
