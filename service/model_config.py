"""ModelConfig: the optional per-model config file, and where it is found.

A model may carry a config beside it: `<name>.yaml` / `<name>.yml` / `<name>.json` next to a single
file `<name>.<ext>`, or `config.yaml` / `config.yml` / `config.json` inside a model folder
`<name>/` (applies to every version) or inside a version folder `<name>/<N>/` (overrides for that
version). Every key is optional. The same schema serves the loader (plugins, globals, Lambda
replacements), preprocessing, classification (labels), the batcher and the repository (version
policy). Documented in docs/model-config.md. Imports neither Flask nor TensorFlow.

Model folders copied from elsewhere often hold another tool's `config.json` (Hugging Face, training
scripts, an unzipped `.keras`). A folder config file that fails the schema *and* has none of our
top-level keys is therefore not ours (`ForeignConfigFile`: the model gets the defaults); one with a
key of ours and a typo fails loudly, and so does any `<name>.yaml` beside a single model file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
FOLDER_CONFIG_NAMES = tuple(f"config{s}" for s in CONFIG_SUFFIXES)
LABELS_FILE = "labels.txt"


class PreprocessingConfig(BaseModel):
    """How uploaded images become the model's input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str | None = None
    """Input that receives the image; default: the first input of rank 3 or 4."""
    size: tuple[int, int] | None = None
    """(height, width); default: from the input's shape."""
    color_mode: Literal["grayscale", "rgb", "rgba"] | None = None
    """Channel layout; default: from the input's last dimension (1, 3 or 4)."""
    resize: Literal["stretch", "crop", "letterbox"] = "stretch"
    """Stretch to H x W, center-crop to the aspect ratio first, or pad (letterbox) to it."""
    mode: Literal["auto", "caffe", "tf", "torch", "none"] = "auto"
    """Keras Applications' `preprocess_input` modes: caffe = RGB->BGR minus the ImageNet mean (0..255),
    tf = -1..1, torch = (x/255 - ImageNet mean) / ImageNet std, none = raw 0..255. `auto` picks the mode
    of a recognised Keras Applications architecture, else falls back to `scale`."""
    scale: Literal["unit", "symmetric", "raw", "mean_std"] | None = None
    """Older RGB-only pixel scaling: unit = 0..1, symmetric = -1..1, raw = 0..255, mean_std =
    (x/255 - mean) / std. Setting it turns auto-detection off; unset with nothing detected: unit."""
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> PreprocessingConfig:
        if self.mode != "auto" and self.scale is not None:
            raise ValueError(
                f"give preprocessing.mode or preprocessing.scale, not both (mode '{self.mode}', scale '{self.scale}')"
            )
        return self


class BatchingConfig(BaseModel):
    """Per-model overrides of the global batching settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int | None = Field(None, ge=1)
    batch_timeout_ms: float | None = Field(None, ge=0)
    batch_timeout_micros: int | None = Field(None, ge=0, exclude=True)
    """TF Serving's name for the same timeout, in microseconds; read into `batch_timeout_ms`."""
    max_enqueued_batches: int | None = Field(None, ge=1)
    allowed_batch_sizes: tuple[int, ...] | None = None
    """Batch sizes the compiled call sees; a batch is padded up to the next one (default: 1, 2, 3, 4, 6, 8, 12, ...)."""

    @model_validator(mode="after")
    def _timeout_from_micros(self) -> BatchingConfig:
        if self.batch_timeout_micros is not None:
            if self.batch_timeout_ms is not None:
                raise ValueError("give batch_timeout_ms or batch_timeout_micros, not both")
            object.__setattr__(self, "batch_timeout_ms", self.batch_timeout_micros / 1000)
        return self


class GateConfig(BaseModel):
    """The equivalence gate a version passes before it serves on a compiled backend (docs/model-config.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(256, ge=0, le=65536)
    """Seeded random rows run through both backends, besides the warm-up inputs."""
    seed: int = Field(0, ge=0)
    tolerance: float | None = Field(None, ge=0)
    """Largest max |difference| allowed, relative to the range of TensorFlow's output; default 1e-5 for fp32, 5e-2 for bf16."""
    inputs: str | None = Field(None, min_length=1)
    """Folder of real sample inputs (images, `.npy`, `.npz`) also run through both backends; relative to the
    folder of the config file that names it (`service.equivalence.read_gate_inputs`)."""


class ModelConfig(BaseModel):
    """Everything a model may say about itself; every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugins: tuple[str, ...] = ()
    """Extra plugin modules for this model: import paths, or `.py` files relative to the config."""
    globals: dict[str, object] = Field(default_factory=dict)
    """Lambda globals for this model only (e.g. `H: 64`), over the registry's."""
    lambdas: dict[str, str] = Field(default_factory=dict)
    """Lambda layer name -> `module:function` that replaces its stored code."""
    allow_lambda: bool | None = None
    """Override of the global ALLOW_LAMBDA for this model."""
    signature_name: str | None = None
    """SavedModel signature served by default (default `serving_default`)."""
    labels: tuple[str, ...] | None = None
    """Class labels, index order; default: `labels.txt` beside the model."""
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    extra_outputs: tuple[str, ...] = ()
    """Layers whose outputs are served beside the model's (a nested model's layer as `outer/inner`)."""
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    backend: Literal["tensorflow", "openvino", "onnxruntime", "xla", "auto"] | None = None
    """What computes the model: TensorFlow, OpenVINO, ONNX Runtime or XLA (TensorFlow's `jit_compile`; each kept
    only if the equivalence gate passes), or `auto` (OpenVINO and ONNX Runtime tried, the fastest that passes its
    gate kept if it was faster than TensorFlow); default: the MODEL_BACKEND setting."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of a compiled backend; bf16 only when asked (a looser gate tolerance, see `gate`), and only on
    OpenVINO: XLA computes in the model's own dtypes."""
    gate: GateConfig = Field(default_factory=GateConfig)
    version_policy: Literal["latest", "all", "specific"] = "latest"
    """Which versions serve: the highest, all, or those in `versions`."""
    versions: tuple[int, ...] = ()
    version_labels: dict[str, int] = Field(default_factory=dict)
    """TF Serving-style labels, e.g. `stable: 1`, `canary: 2`."""
    custom_objects: tuple[str, ...] = ()
    """Custom layers / functions the model needs (written by `service.saving.save_model`); the loader
    names the ones no plugin provides before it tries to load."""
    saved_with: dict[str, str] = Field(default_factory=dict)
    """Versions that wrote the model (`python`, `keras`, `tensorflow`; written by `save_model`). Lambda
    bytecode only runs on the Python minor version that wrote it; the loader refuses other ones."""

    @model_validator(mode="after")
    def _fp32_only_backends(self) -> ModelConfig:
        if self.backend == "xla" and self.precision != "fp32":
            raise ValueError(
                f"precision {self.precision} is OpenVINO's: XLA computes in the model's own dtypes; build mixed "
                "precision into the model (a Keras dtype policy such as mixed_bfloat16) and keep precision fp32"
            )
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise ValueError(
                f"backend: onnxruntime runs fp32 only (precision: {self.precision} is OpenVINO's; use backend: openvino)"
            )
        return self

    @model_validator(mode="after")
    def _distinct_extra_outputs(self) -> ModelConfig:
        for name in self.extra_outputs:
            if not name or name.startswith("/") or name.endswith("/") or "//" in name:
                raise ValueError(f"extra_outputs: '{name}' is not a layer name (`layer` or `outer/inner`)")
            if self.extra_outputs.count(name) > 1:
                raise ValueError(f"extra_outputs: '{name}' is listed twice")
        return self

    def merged(self, override: ModelConfig) -> ModelConfig:
        """Return this config with the keys set explicitly in `override` replaced.

        Raises:
            ModelConfigError: the keys of both do not go together (`backend: onnxruntime` or `xla` in
                one, `precision: bf16` in the other).
        """
        data = self.model_dump()
        for key in override.model_fields_set:
            data[key] = getattr(override, key)
        try:
            return ModelConfig.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
            raise ModelConfigError(f"the model's and the version's config do not go together: {problems}") from err


class ModelConfigError(ValueError):
    """A config file is unreadable or does not match the schema; the message names the file and key."""


class ForeignConfigFile(ModelConfigError):
    """A folder config file that another tool wrote: it fails the schema and holds none of our keys."""


def read_model_config(path: Path) -> ModelConfig:
    """Parse one config file (YAML or JSON).

    Raises:
        ForeignConfigFile: a file named like a folder config (`config.yaml`, `.yml`, `.json`) that
            fails the schema and has no top-level key of ours: not our file (callers ignore it).
        ModelConfigError: the file cannot be parsed, or has unknown or mistyped keys beside at least
            one of ours (a typo in our config fails loudly). `<name>.yaml` files are always ours.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ModelConfigError(f"model config {path.name} is invalid: {err}") from err
    try:
        return ModelConfig.model_validate(data or {})
    except ValidationError as err:
        ours = isinstance(data, dict) and bool(data.keys() & ModelConfig.model_fields.keys())
        if path.name in FOLDER_CONFIG_NAMES and not ours:
            raise ForeignConfigFile(f"{path.name} is not a kerasserve model config (none of its keys is ours)") from err
        raise ModelConfigError(f"model config {path.name} is invalid: {err}") from err


def read_labels(path: Path) -> tuple[str, ...]:
    """Read a labels file: one label per line, index order; blank trailing lines ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


@dataclass(frozen=True, slots=True)
class PreprocessingChoice:
    """How a version's images are scaled, and why; chosen once at load, logged and shown by GET /models."""

    config: PreprocessingConfig
    """The model's preprocessing config, with `mode` filled in when auto-detection chose it."""
    chosen_by: Literal["config", "auto", "default"]
    reason: str

    @property
    def pixels(self) -> tuple[str, str]:
        """("mode", caffe|tf|torch|none) or ("scale", unit|symmetric|raw|mean_std): what images get."""
        if self.config.mode != "auto":
            return "mode", self.config.mode
        return "scale", self.config.scale or "unit"

    def __str__(self) -> str:
        key, value = self.pixels
        return f"{key} {value} ({self.chosen_by}: {self.reason})"
