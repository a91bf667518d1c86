"""Batcher: groups the rows of concurrent requests for one servable into device calls.

The TF Serving scheme, with its knob names: one background thread per batcher takes requests from a
bounded queue. The first request of a batch waits at most `batch_timeout_ms` for others to join; a
batch runs as soon as it holds `max_batch_size` rows. While the thread computes a batch, requests
that arrive queue up and form the next one, so under load batches grow without anyone waiting for a
timer, and a lone request pays at most the timeout. The requests of a batch are handed to `run` as
they are (`ModelInputs`, checked once by preprocessing; the batcher checks nothing again), which
merges their rows once, straight into the padded arrays of the call, and the outputs are sliced back
per request (views, no copies). Requests whose inputs cannot be merged (other names, dtypes or
non-batch shapes, e.g. variable-length inputs) run in separate batches, so they never break each other.

A request with more rows than `max_batch_size` runs alone, in one call to `run` (the runner splits it
into chunks the model was warmed up for). The queue holds at most `max_enqueued_batches *
max_batch_size` rows; beyond that `submit` raises `Overloaded` (a request arriving at an empty queue
is always accepted, whatever its size).

Failure isolation: requests share a call, not a fate. When a call of several requests raises, each
of them is run again alone, so only the requests that fail alone fail, each with its own error (an
out-of-range Embedding index is then the `InvalidInput` of the request that sent it, its row numbers
counted within that request); the others get their answers (`kerasserve_batch_retries_total`,
`kerasserve_batch_isolated_failures_total`). A call of one request fails with its error as it is.

The thread never dies silently. A `MemoryError`, or anything else escaping the loop (a fault of the
thread rather than of a batch; a `MemoryError` is not retried request by request, since that would
repeat the allocations while memory is short), fails the batch in hand with `InferenceError`, is
logged with its traceback, counted (`kerasserve_batcher_restarts_total`), and the loop starts again.
When it dies more than `max_restarts` times within `restart_window_s`, the batcher gives up: queued
and new requests get `ModelNotReady`, and `health()` says why, which turns the manager's readiness
(`/readyz`) red for that model.

`close()` stops accepting requests and lets the thread finish what is queued: pending futures run to
completion (the manager closes a batcher only after its last borrower left, so normally none are
left). It never imports TensorFlow: `run` is any function from arrays to arrays.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from service import metrics, tracing
from service.errors import InferenceError, ModelNotReady, Overloaded
from service.servable import ModelInputs, ServableId, Signature

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
"""Deaths of a batch thread's loop that are restarted within `RESTART_WINDOW_S`; one more gives up."""
RESTART_WINDOW_S = 60.0

RunFunction = Callable[[Sequence[ModelInputs]], dict[str, np.ndarray]]
"""What a batcher calls with the requests of a batch, in order: `InferenceRunner.run`, or any function that
returns one output row per input row of the requests together."""


class BatchFuture(Future):
    """The future `submit` returns; once it has a result, it also says how that result was computed.

    Set by the batch thread before the result: `queue_s` (time in the queue), `compute_s` (the
    device call that produced the result, the whole batch's), `batch_rows` (rows of that call) and
    `batch_span` (the trace span context of that call, None without tracing). The request's thread
    reads them after `result()` for the access log and its trace; nothing calls back up.
    """

    queue_s: float | None = None
    compute_s: float | None = None
    batch_rows: int | None = None
    batch_span: object | None = None


@dataclass(slots=True, eq=False)
class _Request:
    inputs: ModelInputs
    rows: int
    key: tuple[tuple[str, tuple[int, ...], str], ...]
    """Names, row shapes and dtypes: requests with equal keys can be merged."""
    enqueued: float
    trace: object | None = None
    """The submitting request's span context (tracing on), linked from the batch's span."""
    future: BatchFuture = field(default_factory=BatchFuture)


class Batcher:
    """Groups requests for one signature of one servable into calls of `run`, on its own thread.

    Lifecycle: starts its thread in the constructor; `close()` stops it (once the queue is drained).
    `submit` is thread-safe and never blocks on computation. `health()` is '' while it can serve.
    """

    def __init__(
        self,
        servable_id: ServableId,
        run: RunFunction,
        *,
        max_batch_size: int,
        batch_timeout_ms: float,
        max_enqueued_batches: int,
        max_restarts: int = MAX_RESTARTS,
        restart_window_s: float = RESTART_WINDOW_S,
    ) -> None:
        """Start the batch thread.

        Args:
            servable_id: the version served; names the thread, log lines and the metrics' `model` label.
            run: computes a batch: arrays with N rows in, arrays with N rows out.
            max_batch_size: most rows per call (a single larger request still runs, alone).
            batch_timeout_ms: longest the first request of a batch waits for others; 0 = never wait.
            max_enqueued_batches: queue bound, in batches of `max_batch_size` rows.
            max_restarts: deaths of the batch loop restarted within `restart_window_s`; one more
                within the window and the batcher gives up (`health()` then says why).
            restart_window_s: the window, in seconds.
        """
        if max_batch_size < 1 or max_enqueued_batches < 1 or batch_timeout_ms < 0:
            raise ValueError("max_batch_size and max_enqueued_batches must be >= 1 and batch_timeout_ms >= 0")
        self._id = servable_id
        self._run = run
        self._max_batch_size = max_batch_size
        self._timeout_s = batch_timeout_ms / 1000.0
        self._max_queued_rows = max_enqueued_batches * max_batch_size
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._closed = False
        self._failed = ""
        """Why the batcher gave up (its loop kept dying); '' while it serves."""
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._deaths: deque[float] = deque()
        self._current: list[_Request] = []
        """The batch the thread is working on (settled by `_restart_after` if the loop dies)."""
        self._cond = threading.Condition(threading.Lock())
        # Bind the label once: the hot path then skips the label lookup of every observation.
        name = servable_id.name
        self._batch_rows = metrics.BATCH_ROWS.labels(model=name)
        self._batches = metrics.BATCHES.labels(model=name)
        self._queue_seconds = metrics.QUEUE_SECONDS.labels(model=name)
        self._compute_seconds = metrics.COMPUTE_SECONDS.labels(model=name)
        self._rejected = metrics.REJECTED.labels(model=name)
        self._retries = metrics.BATCH_RETRIES.labels(model=name)
        self._isolated_failures = metrics.BATCH_ISOLATED_FAILURES.labels(model=name)
        self._restarts = metrics.BATCHER_RESTARTS.labels(model=name)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{servable_id}", daemon=True)
        self._thread.start()

    def submit(self, inputs: ModelInputs) -> BatchFuture:
        """Queue one request's rows; the future's result holds exactly these rows' outputs.

        Args:
            inputs: the request's inputs, as the boundary (`preprocessing.to_model_inputs`) made them.

        Returns:
            A `Future` of `dict[str, np.ndarray]`; it fails with what `run` raised for this request's
            rows alone (see the module docstring), with `InferenceError` when the batch thread died
            on its batch, or with `ModelNotReady` when the batcher gave up before running it.

        Raises:
            Overloaded: the queue is full.
            ModelNotReady: the batcher is closed (the version is being unloaded), or gave up.
        """
        rows = inputs.rows
        request = _Request(inputs, rows, inputs.batch_key, time.monotonic(), tracing.current_span_context())
        with self._cond:
            if self._failed:
                raise ModelNotReady(self._id.name, f"version {self._id.version} stopped serving: {self._failed}")
            if self._closed:
                raise ModelNotReady(self._id.name, f"version {self._id.version} is being unloaded")
            if self._queue and self._queued_rows + rows > self._max_queued_rows:
                self._rejected.inc()
                raise Overloaded(
                    f"model '{self._id.name}' is overloaded: {self._queued_rows} rows are queued "
                    f"(limit {self._max_queued_rows}); retry later"
                )
            was_empty = not self._queue
            self._queue.append(request)
            self._queued_rows += rows
            # Wake the batch thread only when it has something to do: a first request to wait on,
            # or a full batch. Otherwise it is computing, or waiting for its deadline anyway, and
            # waking it per request would only fight the request threads for the GIL.
            if was_empty or self._queued_rows >= self._max_batch_size:
                self._cond.notify()
        return request.future

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, let the queued ones run, and stop the thread. Safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def health(self) -> str:
        """Return '' while the batcher can serve; otherwise why not (its loop gave up, or its thread is gone)."""
        if self._failed:
            return f"the batch thread of {self._id} stopped: {self._failed}"
        if not self._closed and not self._thread.is_alive():
            return f"the batch thread of {self._id} is not running"
        return ""

    # --- the batch thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        """The thread: run the batch loop; start it again when it dies, until it dies too often."""
        while True:
            try:
                self._serve()
                return
            except BaseException as err:  # noqa: BLE001 - never die silently: settle, log, count, restart
                if not self._restart_after(err):
                    return

    def _serve(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            self._current = batch
            self._execute(batch)
            self._current = []

    def _restart_after(self, err: BaseException) -> bool:
        """Log and count the death, settle the batch the loop died on; return whether to run the loop again.

        The log line comes before the batch's futures fail, so a client told about the failure finds
        it in the log.
        """
        self._restarts.inc()
        batch, self._current = self._current, []
        failed = InferenceError(f"model '{self._id.name}' failed while computing ({type(err).__name__}); retry later")
        now = time.monotonic()
        self._deaths.append(now)
        while now - self._deaths[0] > self._restart_window_s:
            self._deaths.popleft()
        deaths = len(self._deaths)
        if deaths <= self._max_restarts:
            log.error(
                "%s batch thread died on a batch of %d request(s) (%s: %s); restarting it "
                "(death %d of %d allowed within %gs)",
                self._id,
                len(batch),
                type(err).__name__,
                err,
                deaths,
                self._max_restarts,
                self._restart_window_s,
                exc_info=err,
            )
            for request in batch:
                _fail(request.future, failed)
            with self._cond:
                self._queued_rows = sum(r.rows for r in self._queue)  # in case it died inside _take
            return True
        with self._cond:
            self._failed = (
                f"it died {deaths} time{'s' if deaths > 1 else ''} within {self._restart_window_s:g}s "
                f"(last: {type(err).__name__})"
            )
            queued = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        log.error(
            "%s batch thread died %d times within %gs (last: %s: %s); giving up: the version answers 503 "
            "and the model is reported not ready until it is loaded again",
            self._id,
            deaths,
            self._restart_window_s,
            type(err).__name__,
            err,
            exc_info=err,
        )
        for request in batch:
            _fail(request.future, failed)
        refused = ModelNotReady(self._id.name, f"version {self._id.version} stopped serving: {self._failed}")
        for request in queued:
            _fail(request.future, refused)
        return False

    def _next_batch(self) -> list[_Request] | None:
        """Wait for a batch and take it from the queue (lock held); None once closed and drained."""
        while not self._queue:
            if self._closed:
                return None
            self._cond.wait()
        # The first request waits until its deadline, counted from when it was queued: requests that
        # queued up while the previous batch was computing have waited already and go at once.
        deadline = self._queue[0].enqueued + self._timeout_s
        while self._queued_rows < self._max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        return self._take()

    def _take(self) -> list[_Request]:
        """Pop the first request and the following ones that fit and can be merged with it."""
        queue = self._queue
        key = queue[0].key
        batch: list[_Request] = []
        rows = 0
        skipped: list[_Request] = []
        while queue and rows < self._max_batch_size:
            request = queue[0]
            if request.key != key:
                skipped.append(queue.popleft())
                continue
            if batch and rows + request.rows > self._max_batch_size:
                break
            queue.popleft()
            batch.append(request)
            rows += request.rows
        queue.extendleft(reversed(skipped))  # they keep their place at the front
        self._queued_rows -= rows
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        """Run one batch and settle every future in it (outside the lock)."""
        now = time.monotonic()
        live = []
        for request in batch:
            # A future cancelled by its caller (e.g. it gave up waiting) is not computed.
            if request.future.set_running_or_notify_cancel():
                live.append(request)
                self._queue_seconds.observe(now - request.enqueued)
        if not live:
            return
        rows = sum(r.rows for r in live)
        for request in live:
            request.future.queue_s = now - request.enqueued
        try:
            outputs = self._call(live, rows)
        except MemoryError:
            raise  # a fault of this thread, not of the batch: `_restart_after` settles it
        except Exception as err:  # noqa: BLE001 - every future of the batch must be settled
            if len(live) == 1:
                log.warning("%s request of %d rows failed: %s", self._id, rows, err)
                live[0].future.set_exception(err)
            else:
                self._isolate(live, rows, err)
            return
        if len(live) == 1:
            live[0].future.set_result(outputs)
            return
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != rows:
                # The model's fault, the same for every request: running them alone would hide it.
                error = InferenceError(
                    f"output '{name}' of model '{self._id.name}' has shape {array.shape}, not {rows} rows; "
                    "it cannot be split between requests (set max_batch_size: 1 for this model)"
                )
                log.warning("%s batch of %d requests failed: %s", self._id, len(live), error)
                for request in live:
                    request.future.set_exception(error)
                return
        offset = 0
        for request in live:
            stop = offset + request.rows
            request.future.set_result({name: array[offset:stop] for name, array in outputs.items()})
            offset = stop

    def _call(self, requests: list[_Request], rows: int) -> dict[str, np.ndarray]:
        """Run the requests' rows in one call (`run` merges them), observe the call."""
        with tracing.batch_span(self._id, rows, [r.trace for r in requests]) as span_context:
            started = time.monotonic()
            outputs = self._run([r.inputs for r in requests])
            seconds = time.monotonic() - started
        self._compute_seconds.observe(seconds)
        self._batch_rows.observe(rows)
        self._batches.inc()
        for request in requests:  # read by the request's thread once the result is set
            future = request.future
            future.compute_s = seconds
            future.batch_rows = rows
            future.batch_span = span_context
        return outputs

    def _isolate(self, live: list[_Request], rows: int, err: Exception) -> None:
        """Run each request of a failed batch alone: only those that fail alone fail, with their own error."""
        self._retries.inc()
        log.warning(
            "%s batch of %d requests, %d rows failed (%s: %s); running each request alone",
            self._id,
            len(live),
            rows,
            type(err).__name__,
            err,
        )
        for request in live:
            try:
                outputs = self._call([request], request.rows)
            except MemoryError:
                raise
            except Exception as alone:  # noqa: BLE001 - this request's own failure
                self._isolated_failures.inc()
                log.warning("%s request of %d rows failed alone: %s", self._id, request.rows, alone)
                request.future.set_exception(alone)
            else:
                request.future.set_result(outputs)


def _fail(future: Future, error: BaseException) -> None:
    """Fail `future` unless it is settled or cancelled already."""
    if future.done():
        return
    try:
        future.set_exception(error)
    except InvalidStateError:  # cancelled or settled meanwhile
        pass


def input_bytes_per_row(signature: Signature) -> int:
    """Bytes of one row of `signature`'s inputs (unknown dimensions count as 1; string inputs as 0)."""
    total = 0
    for tensor in signature.inputs:
        try:
            itemsize = np.dtype(tensor.dtype).itemsize
        except TypeError:  # TF strings, and dtypes numpy lacks
            continue
        dims = tensor.shape[1:] if signature.batched else tensor.shape
        total += itemsize * math.prod(d or 1 for d in dims)
    return total


def capped_batch_sizes(allowed: tuple[int, ...], signature: Signature, max_batch_input_bytes: int) -> tuple[int, ...]:
    """The batch sizes of `allowed` whose calls take at most `max_batch_input_bytes` of inputs (at least the first).

    A CPU core gains little from batching rows that are each costly (MobileNetV2 on one thread:
    12.5 ms per row at batch 4, 13 to 15 ms at 8 to 32, docs/operations.md), while the
    activations it keeps grow with the rows of the largest call, in every worker. 0 keeps `allowed`.
    """
    row = input_bytes_per_row(signature)
    if not max_batch_input_bytes or not row:
        return allowed
    fitting = tuple(size for size in allowed if size * row <= max_batch_input_bytes)
    return fitting or allowed[:1]
