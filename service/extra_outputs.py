"""Extra outputs: serve chosen layers' outputs (pooled features, an embedding) beside a Keras model's own.

`with_extra_outputs(model, paths)` returns a Keras model over the same layers and weights whose
outputs are the model's own followed by the outputs of the layers named in `paths`; a layer of a
nested model is named `outer/inner` (at any depth: `a/b/c`). The call graph is rebuilt once with
`keras.models.clone_model`, reusing every layer (no weight is copied), and each nested model named
in a path is called as a model that also returns the inner layer's output, so one forward pass
computes the model's outputs and the extra ones together. Only Keras 3 functional and Sequential
models have a graph to read; any other model, an unknown name (the message lists close names), a
layer called more than once or one with several outputs fails the version with `ModelLoadError`.
Used only by `runner.keras_signature`, when the loader builds a model's signature; imports Keras lazily.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import Any

from service.errors import ModelLoadError

SEPARATOR = "/"


def with_extra_outputs(model: Any, paths: Sequence[str]) -> Any:
    """Return a model computing `model`'s outputs, then the output of each layer in `paths`, in order.

    Raises:
        ModelLoadError: the model has no graph (subclassed, tf_keras), or a path names no layer, a
            layer called several times, or a layer with several outputs.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"extra_outputs needs a model built by Keras 3 (functional or Sequential); this one is a "
            f"{type(model).__module__.split('.')[0]} {type(model).__name__}"
        )
    served, _ = _expose(keras, model, model, tuple(paths), prefix="")
    return served


def layer_paths(model: Any, prefix: str = "") -> Iterator[str]:
    """Yield the path of every layer of `model`, nested models' layers included (`outer/inner`)."""
    for layer in getattr(model, "layers", None) or []:
        yield prefix + layer.name
        if getattr(layer, "layers", None) is not None:
            yield from layer_paths(layer, f"{prefix}{layer.name}{SEPARATOR}")


def _graph(keras: Any, model: Any, shown: str) -> Any:
    """The model as a functional model over its own layers (a Sequential's built graph)."""
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ModelLoadError(f"extra_outputs: Sequential model {shown} has no input shape, so no graph to read")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if type(model).__name__ != "Functional" and not hasattr(model, "_run_through_graph"):
        raise ModelLoadError(
            f"extra_outputs: {shown} is a subclassed {type(model).__name__}, whose layers are not a graph; "
            "only functional and Sequential models can serve a layer's output"
        )
    return model


def _expose(keras: Any, root: Any, model: Any, paths: tuple[str, ...], prefix: str) -> tuple[Any, Any]:
    """Return (model with outputs [own..., extras...], the structure of its own outputs)."""
    shown = f"nested model '{prefix.rstrip(SEPARATOR)}'" if prefix else "the model"
    graph = _graph(keras, model, shown)
    layers = {layer.name: layer for layer in graph.layers}
    direct: set[str] = set()
    nested: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(SEPARATOR)
        if head not in layers:
            raise ModelLoadError(_unknown(root, prefix + path))
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            direct.add(head)
    inner: dict[str, tuple[Any, Any, list[str]]] = {}
    for head, rests in nested.items():
        layer = layers[head]
        if not isinstance(layer, keras.Model):
            raise ModelLoadError(
                f"extra_outputs: '{prefix}{head}' is a {type(layer).__name__} layer, not a model, so "
                f"'{prefix}{head}{SEPARATOR}{rests[0]}' does not exist; {_close(root, prefix + head + SEPARATOR + rests[0])}"
            )
        sub, structure = _expose(keras, root, layer, tuple(rests), f"{prefix}{head}{SEPARATOR}")
        inner[head] = (sub, structure, rests)
    captured: dict[str, list[Any]] = {}

    def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(layer, "name", "")
        if name in inner:
            sub, structure, rests = inner[name]
            flat = keras.tree.flatten(sub(*args, **kwargs))
            own = len(keras.tree.flatten(structure))
            result = keras.tree.pack_sequence_as(structure, flat[:own])
            for rest, tensor in zip(rests, flat[own:]):
                captured.setdefault(f"{name}{SEPARATOR}{rest}", []).append(tensor)
        else:
            result = layer(*args, **kwargs)
        if name in direct:
            captured.setdefault(name, []).append(result)
        return result

    # clone_function returns each layer itself: the copy shares every layer and weight.
    clone = keras.models.clone_model(graph, clone_function=lambda layer: layer, call_function=call_function)
    extras = []
    for path in paths:
        tensors = captured.get(path, [])
        if len(tensors) != 1:
            raise ModelLoadError(
                f"extra_outputs: layer '{prefix}{path}' is called {len(tensors)} times in the model; "
                "only a layer called exactly once has one output to serve"
            )
        if isinstance(tensors[0], (list, tuple, dict)):
            raise ModelLoadError(
                f"extra_outputs: layer '{prefix}{path}' returns several tensors; name a layer with one output"
            )
        extras.append(tensors[0])
    served = keras.Model(clone.input, [*clone.outputs, *extras], name=model.name)
    return served, graph.output


def _unknown(root: Any, path: str) -> str:
    return f"extra_outputs: the model has no layer '{path}'; {_close(root, path)}"


def _close(root: Any, path: str) -> str:
    """Name the layer paths closest to `path` (difflib), or some of the model's layers when none is close."""
    paths = list(layer_paths(root))
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.6)
    if close:
        return "close names: " + ", ".join(f"'{p}'" for p in close)
    top = [p for p in paths if SEPARATOR not in p]
    more = f" (and {len(top) - 10} more)" if len(top) > 10 else ""
    return (
        "its layers are: "
        + ", ".join(f"'{p}'" for p in top[:10])
        + more
        + "; name a nested model's layer as 'outer/inner'"
    )
