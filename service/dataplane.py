"""DataPlane: the protocol-independent operations every API calls (no HTTP).

predict, predict_classes, classify/regress (tf.Example requests), metadata, status and readiness.
Protocol adapters turn wire formats into the frozen request values below and the responses back into
wire formats; the data plane borrows a servable from the manager, prepares the inputs
(`service.preprocessing`), submits them to the servable's batcher and waits for the result. The
arrays are fed as the adapter gives them and the outputs returned as the model computed them:
protocol shape rules (TF Serving's unit axis, `:classify` pairs) are the adapters'. It never
imports Flask or TensorFlow and never holds a servable beyond one call.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from service import access_log, classification, examples, pod_readiness, preprocessing, tracing
from service.errors import (
    InferenceError,
    InvalidInput,
    ModelLoadFailed,
    ModelNotFound,
    Overloaded,
    ServingError,
    Unimplemented,
)
from service.model_control import ModelControl
from service.servable import BackendReport, ModelInputs, Servable, ServableId, ServableRequest, ServableState, Signature
from service.settings import Settings
from service.status import ModelStatus, Readiness

if TYPE_CHECKING:  # pragma: no cover
    from service.manager import ServableManager

log = logging.getLogger(__name__)

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """One inference call, whatever protocol it came in.

    `inputs` maps input names (or `preprocessing.UNNAMED` for a single-input model) to arrays with
    the rows first; arrays of bytes sent to numeric inputs are encoded images. `images` are encoded
    images for the model's image input (multipart uploads and raw bodies). `outputs` limits and
    orders the outputs returned (None: all, in the signature's order). `inputs_for`, when set, gives
    the inputs instead of `inputs` when they depend on the signature (a KServe v2 raw binary body;
    TF Serving's unit axis, `protocols.add_unit_axis`): the data plane calls it with the signature of
    the version it borrowed, so decoding and running see one version. The data plane feeds the
    arrays as they are and answers the model's outputs as they are; protocol rules on shapes are the
    adapters'.
    """

    target: ServableRequest
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    images: tuple[bytes, ...] = ()
    signature_name: str | None = None
    outputs: tuple[str, ...] | None = None
    inputs_for: Callable[[Signature], Mapping[str, np.ndarray]] | None = None
    client_gone: Callable[[], bool] | None = None
    """Whether the client closed its connection (checked between images: decoding stops); None: never asked."""


@dataclass(frozen=True, slots=True)
class PredictResponse:
    """Outputs of one call: output name -> array with one row per input row, in signature order.

    `signature`: the signature that computed them (None only where a test builds a response by hand).
    """

    servable_id: ServableId
    outputs: Mapping[str, np.ndarray]
    labels: tuple[str, ...] = ()
    signature: Signature | None = None


@dataclass(frozen=True, slots=True)
class ClassesResponse:
    """Classes of every output of one call (Keras `predict_classes`), with their labels."""

    servable_id: ServableId
    classes: Mapping[str, classification.ClassScores]


@dataclass(frozen=True, slots=True)
class ExamplesRequest:
    """A TF Serving `:classify` or `:regress` call: JSON tf.Example features per row, plus context.

    `inputs_for`, when set, gives the inputs of a signature that takes the features as inputs (the
    adapter's columns, e.g. with TF Serving's unit axis); None: `examples.feature_columns`, as they are.
    """

    target: ServableRequest
    method: Literal["classify", "regress"]
    examples: tuple[Mapping[str, object], ...]
    context: Mapping[str, object] = field(default_factory=dict)
    signature_name: str | None = None
    inputs_for: Callable[[Signature], Mapping[str, np.ndarray]] | None = None


@dataclass(frozen=True, slots=True)
class ExamplesResponse:
    """Outputs of a `:classify` or `:regress` call, as the model returned them (the adapter shapes TF Serving's results).

    `examples_signature`: the signature took serialized tf.Examples (its method is classify or
    regress): `outputs` are its named `scores` / `classes` / `outputs`. Else the signature took the
    features as inputs and `outputs` are its outputs in signature order.
    """

    servable_id: ServableId
    signature_name: str
    outputs: Mapping[str, np.ndarray]
    rows: int
    labels: tuple[str, ...] = ()
    examples_signature: bool = False


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """Signatures and labels of the version answering a request."""

    servable_id: ServableId
    signatures: Mapping[str, Signature]
    default_signature: str
    labels: tuple[str, ...]
    device: str
    backend: BackendReport = BackendReport()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One line of the repository index: a version the manager knows, or a model it holds no version of."""

    name: str
    version: int | None = None
    state: ServableState | None = None
    """None: in the models folder, never loaded (Triton lists the name alone)."""
    reason: str = ""
    evicted: bool = False
    """Left unloaded by MAX_LOADED_MODELS; the next request loads it."""
    unloaded: bool = False
    """Unloaded through the repository API."""


class DataPlane:
    """Protocol-independent serving operations over one `ServableManager`.

    Created once per worker by `create_app`; holds no per-request state. Thread-safe.
    """

    def __init__(self, manager: ServableManager, settings: Settings, control: ModelControl | None = None) -> None:
        self._manager = manager
        self._settings = settings
        self._control = control or ModelControl(settings)

    # --- inference --------------------------------------------------------------------------------

    def predict(self, request: PredictRequest) -> PredictResponse:
        """Run `request` on the version it names and return every (or the requested) output.

        Raises:
            ModelNotFound: unknown model, version or label.
            ModelNotReady: the model has no AVAILABLE version.
            InvalidInput / InvalidTensor / PayloadTooLarge: the inputs do not fit the signature.
            Overloaded: the batch queue is full, or the result did not come in time.
            InferenceError: the model failed.
        """
        with self._handle(request.target) as servable:
            signature_name = self._signature_name(servable, request.signature_name)
            signature = servable.signatures[signature_name]
            self._check_outputs(signature, request.outputs)
            with tracing.span("preprocess"):
                inputs = self._model_inputs(servable, signature, request)
            outputs = self._run(servable, signature_name, inputs)
            ordered = self._order(outputs, signature, request.outputs)
            return PredictResponse(servable.id, ordered, servable.labels, signature)

    def predict_classes(
        self, request: PredictRequest, *, threshold: float = classification.DEFAULT_THRESHOLD, top_k: int | None = None
    ) -> ClassesResponse:
        """Run `request` and turn every output into classes (argmax, or threshold for one unit).

        Raises:
            The errors of `predict`; InvalidInput when an output has no class axis.
        """
        response = self.predict(request)
        classes = {}
        for name, scores in response.outputs.items():
            if scores.ndim < 2:
                raise InvalidInput(f"output '{name}' has no class axis (shape {list(scores.shape)}); use predict")
            classes[name] = classification.predict_classes(
                scores, threshold=threshold, top_k=top_k, labels=response.labels
            )
        return ClassesResponse(response.servable_id, classes)

    def classify_examples(self, request: ExamplesRequest) -> ExamplesResponse:
        """Answer TF Serving's `:classify`/`:regress` from tf.Example features.

        A signature whose method is classify/regress gets the serialized examples, as in TF Serving.
        Any other signature (e.g. a Keras model's `serving_default`) gets the features as inputs of
        the same names (`request.inputs_for`, else `examples.feature_columns`). The outputs come back
        as the model returned them; the TF Serving adapter turns them into `[label, score]` pairs or
        one value per row (`protocols.tfserving.examples_results`).

        Raises:
            The errors of `predict`; InvalidInput for features that do not fit; Unimplemented when
            the signature takes serialized examples this server cannot run.
        """
        # Before any example is merged with the context or serialized: the merge costs rows x features.
        preprocessing.check_rows(len(request.examples), self._settings.max_images_per_request, "examples")
        with self._handle(request.target) as servable:
            wanted = request.signature_name or servable.default_signature
            if wanted not in servable.signatures:
                raise InvalidInput(self._unknown_signature(servable, wanted))
            signature = servable.signatures[wanted]
            if signature.method_name in (CLASSIFY_METHOD, REGRESS_METHOD):
                return self._run_examples(servable, wanted, signature, request)
            with tracing.span("preprocess"):
                if request.inputs_for is not None:
                    columns = request.inputs_for(signature)
                else:
                    columns = examples.feature_columns(request.examples, request.context, signature)
                inputs = self._model_inputs(servable, signature, PredictRequest(request.target, columns))
            outputs = self._order(self._run(servable, wanted, inputs), signature, None)
            return ExamplesResponse(servable.id, wanted, outputs, len(request.examples), servable.labels)

    # --- metadata ---------------------------------------------------------------------------------

    def metadata(self, target: ServableRequest, *, load: bool = True) -> ModelMetadata:
        """Return the signatures and labels of the version answering `target`.

        `load=False`: a model left unloaded by MAX_LOADED_MODELS is not loaded for it (ModelNotReady).

        Raises:
            ModelNotFound / ModelNotReady.
        """
        with self._handle(target, load=load) as servable:
            return ModelMetadata(
                servable.id,
                servable.signatures,
                servable.default_signature,
                servable.labels,
                servable.info.device,
                servable.info.backend,
            )

    def model_status(self, name: str) -> ModelStatus:
        """Return every version of `name` with its state (raises ModelNotFound)."""
        return self._manager.status(name)

    def model_statuses(self) -> list[ModelStatus]:
        """Return the status of every model the repository knows."""
        return self._manager.statuses()

    def readiness(self) -> Readiness:
        """Return whether the service is ready, and per model: this worker's models, and every worker ready.

        A worker whose own models are ready still answers not ready while a sibling worker is
        loading (see `service.pod_readiness`): a probe must not put the pod into service early.
        """
        readiness = self._manager.readiness()
        pod_readiness.publish(readiness.ready)
        if readiness.ready:
            waiting = pod_readiness.others_not_ready()
            if waiting:
                return Readiness(ready=False, models=readiness.models, reason=waiting)
        return readiness

    # --- model control (Triton's repository extension) --------------------------------------------

    def load_model(self, name: str) -> ModelStatus:
        """Load (or reload) model `name` and return once it is AVAILABLE in this worker (Triton's `load`).

        The decision goes to every worker (`service.model_control`); this worker rescans the folder
        at once and waits (LOAD_WAIT_S) until each version the repository aspires is AVAILABLE with
        its current files, or failed. A loaded model whose files did not change is not loaded again.

        Raises:
            ModelControlDisabled: MODEL_CONTROL=poll.
            ModelNotFound: no model `name` in the models folder.
            ModelLoadFailed: no complete version, or a version failed to load (its error).
            ModelNotReady: still loading after LOAD_WAIT_S.
        """
        control = self._control
        control.require_explicit()
        control.rescan()  # a model copied in just before the call counts
        if name not in control.repository_names() and name not in self._manager.model_names():
            error = ModelNotFound(name)
            error.args = (f"failed to load '{name}', failed to poll from model repository: no model '{name}' in it",)
            raise error
        control.load(name)
        control.rescan()
        try:
            status = self._manager.wait_loaded(name, self._settings.load_wait_s)
        except ModelNotFound:
            raise ModelLoadFailed(f"failed to load '{name}', no version is available") from None
        failures = [f"version {v.version}: {v.error}" for v in status.versions if v.error]
        if failures:
            raise ModelLoadFailed(f"load failed for model '{name}': {'; '.join(failures)}")
        if not any(v.state is ServableState.AVAILABLE for v in status.versions):
            raise ModelLoadFailed(f"failed to load '{name}', no version is available")
        return status

    def unload_model(self, name: str) -> None:
        """Unload every version of model `name` in every worker (Triton's `unload`); idempotent.

        Returns once no version of it is loaded in this worker (its requests in flight finished, or
        LOAD_WAIT_S passed); the other workers follow on their next scan (the decisions file's
        inotify event, else within POLL_INTERVAL_S).

        Raises:
            ModelControlDisabled: MODEL_CONTROL=poll.
        """
        self._control.require_explicit()
        self._control.unload(name)
        self._control.rescan()
        if not self._manager.wait_unloaded(name, self._settings.load_wait_s):
            log.warning(
                "model '%s' still has requests in flight %gs after its unload", name, self._settings.load_wait_s
            )

    def repository_index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository, loaded or not, one entry per version the manager knows (Triton's index)."""
        unloaded = self._control.decisions().unloaded if self._control.explicit else frozenset()
        statuses = {s.name: s for s in self._manager.statuses()}
        entries: list[IndexEntry] = []
        for name in sorted(self._control.repository_names() | set(statuses)):
            status = statuses.get(name)
            if status is None or not status.versions:
                if not ready_only:
                    entries.append(IndexEntry(name, unloaded=name in unloaded))
                continue
            for v in status.versions:
                if ready_only and v.state is not ServableState.AVAILABLE:
                    continue
                entries.append(IndexEntry(name, v.version, v.state, v.error, evicted=status.evicted))
        return entries

    def knows_model(self, name: str) -> bool:
        """Tell whether the repository knows model `name`, in any state."""
        return name in self._manager.model_names()

    def default_model(self) -> str:
        """Return the model answering requests that name none (raises ModelNotFound when ambiguous)."""
        return self._manager.default_model()

    # --- internals --------------------------------------------------------------------------------

    @contextmanager
    def _handle(self, target: ServableRequest, *, load: bool = True) -> Iterator[Servable]:
        """The manager's handle; a model in the folder but not loaded under MODEL_CONTROL=explicit is
        refused with how to load it, rather than "does not exist"."""
        handle = self._manager.handle(target, load=load)
        try:
            servable = handle.__enter__()
        except ModelNotFound:
            name = target.name
            if (
                self._control.explicit
                and name in self._control.repository_names()
                and name not in self._manager.model_names()
            ):
                error = ModelNotFound(name)
                error.args = (
                    f"model '{name}' is not loaded (MODEL_CONTROL=explicit); "
                    f"load it with POST /v2/repository/models/{name}/load",
                )
                raise error from None
            raise
        try:
            yield servable
        finally:
            handle.__exit__(None, None, None)

    @staticmethod
    def _unknown_signature(servable: Servable, name: str) -> str:
        return f"model '{servable.id.name}' has no signature '{name}'; it has: {', '.join(sorted(servable.signatures))}"

    def _signature_name(self, servable: Servable, wanted: str | None) -> str:
        name = wanted or servable.default_signature
        if name not in servable.signatures:
            raise InvalidInput(self._unknown_signature(servable, name))
        return name

    def _model_inputs(self, servable: Servable, signature: Signature, request: PredictRequest) -> ModelInputs:
        """Check the request's arrays (`inputs_for(signature)` when set) and images for `signature`, as they are."""
        inputs = request.inputs_for(signature) if request.inputs_for is not None else request.inputs
        return preprocessing.to_model_inputs(
            inputs,
            request.images,
            signature,
            servable.config.preprocessing,
            max_pixels=self._settings.max_image_pixels,
            max_rows=self._settings.max_images_per_request,
            max_request_pixels=self._settings.max_request_pixels,
            max_decode_s=self._settings.max_request_decode_s,
            client_gone=request.client_gone,
        )

    def _run(self, servable: Servable, signature_name: str, inputs: ModelInputs) -> dict[str, np.ndarray]:
        """Submit `inputs` to the signature's batcher (or direct run) and wait for its outputs."""
        submit = servable.submit.get(signature_name)
        if submit is None:
            raise Unimplemented(
                f"signature '{signature_name}' of model '{servable.id.name}' cannot be run by this server"
            )
        submitted_ns = tracing.now_ns()
        future = submit(inputs)
        timeout_s = self._settings.request_timeout_s
        try:
            outputs = future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            raise Overloaded(f"model '{servable.id}' did not answer within {timeout_s:g}s; retry later") from err
        except ServingError:
            raise
        except Exception as err:  # noqa: BLE001 - any other failure is the model's, not the client's
            log.error("%s failed on signature %r: %s", servable.id, signature_name, err, exc_info=True)
            raise InferenceError(f"model '{servable.id}' failed while computing") from err
        # How the batch thread computed it (a BatchFuture; a plain Future from a direct run has none of it).
        queue_s = getattr(future, "queue_s", None)
        access_log.note_inference(
            servable.id,
            inputs.rows,
            queue_s=queue_s,
            compute_s=getattr(future, "compute_s", None),
            batch_rows=getattr(future, "batch_rows", None),
        )
        tracing.queue_span(submitted_ns, queue_s, getattr(future, "batch_span", None))
        return outputs

    @staticmethod
    def _check_outputs(signature: Signature, wanted: tuple[str, ...] | None) -> None:
        """Refuse requested outputs the signature lacks, before any computing (close names suggested)."""
        names = [t.name for t in signature.outputs]
        for name in wanted or ():
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise InvalidInput(f"unknown output '{name}'; the model's outputs are: {', '.join(names)}{hint}")

    @staticmethod
    def _order(
        outputs: Mapping[str, np.ndarray], signature: Signature, wanted: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        """Return the outputs in signature order, or only the `wanted` ones in that order."""
        if wanted is not None:
            unknown = [name for name in wanted if name not in outputs]
            if unknown:
                raise InvalidInput(f"unknown output '{unknown[0]}'; the model's outputs are: {', '.join(outputs)}")
            return {name: np.asarray(outputs[name]) for name in wanted}
        ordered = {t.name: np.asarray(outputs[t.name]) for t in signature.outputs if t.name in outputs}
        for name, value in outputs.items():
            if name not in ordered:
                ordered[name] = np.asarray(value)
        return ordered

    def _run_examples(
        self, servable: Servable, signature_name: str, signature: Signature, request: ExamplesRequest
    ) -> ExamplesResponse:
        """Feed serialized tf.Examples to a classify/regress signature; its outputs as they are."""
        is_classify = signature.method_name == CLASSIFY_METHOD
        if (request.method == "classify") != is_classify:
            raise InvalidInput(
                f"signature '{signature_name}' is a {'classify' if is_classify else 'regress'} signature; "
                f"call :{'classify' if is_classify else 'regress'}"
            )
        if len(signature.inputs) != 1:
            raise Unimplemented(
                f"signature '{signature_name}' takes {len(signature.inputs)} inputs, not one tf.Example input"
            )
        serialized = np.empty(len(request.examples), dtype=object)
        for index, example in enumerate(request.examples):
            serialized[index] = examples.encode_example(example, request.context)
        inputs = self._model_inputs(
            servable, signature, PredictRequest(request.target, {signature.inputs[0].name: serialized})
        )
        outputs = self._run(servable, signature_name, inputs)
        return ExamplesResponse(
            servable.id, signature_name, outputs, len(request.examples), servable.labels, examples_signature=True
        )
