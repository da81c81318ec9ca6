"""The model files bqq-deploy reads, known by suffix (one table for bqq-export, bqq-validate
and the runtime), and the input specs a torch program or module declares."""

from __future__ import annotations

import inspect
from pathlib import Path

from .specs import TensorSpec

# kind -> suffixes (lower case)
SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "exported": (".pt2",),  # torch.export programs
    "torchscript": (".pt", ".pth", ".ts", ".jit", ".torchscript"),
    "engine": (".engine", ".plan"),  # TensorRT plans
}


def kind_of(path: str | Path) -> str | None:
    """"onnx", "exported", "torchscript", "engine" or None, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind, suffixes in SUFFIXES.items() if suffix in suffixes), None)


def known_suffixes(*kinds: str) -> str:
    """The suffixes of kinds (all kinds when none is named), for messages."""
    return ", ".join(s for kind in (kinds or SUFFIXES) for s in SUFFIXES[kind])


def exported_input_specs(program) -> list[TensorSpec]:
    """The user inputs of a torch.export program: names, shapes (symbolic dims as their
    names) and dtypes from the placeholders' fake tensors."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if value is None or not hasattr(value, "shape"):
            specs.append(TensorSpec(name))
            continue
        shape = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else str(d)
                      for d in value.shape)
        specs.append(TensorSpec(name, shape, str(value.dtype).removeprefix("torch.")))
    return specs


def module_input_specs(module) -> list[TensorSpec]:
    """Input names from a module's forward signature (TorchScript: its schema); shapes are
    unknown. Arguments with a default value are left out: an exported graph fixes them."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        names = [arg.name for arg in schema.arguments[1:] if not arg.has_default_value()]
    else:
        params = inspect.signature(module.forward).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                 and p.default is inspect.Parameter.empty]
    return [TensorSpec(name) for name in names]
