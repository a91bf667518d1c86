"""Batcher: grouping, per-request results, queue bound, timeouts, failures and closing.

`run` is a plain numpy function here (the batcher never imports TensorFlow); the test that compares
batched and unbatched results of a real Keras model through the runner is at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching import Batcher, capped_batch_sizes, input_bytes_per_row
from service.errors import InvalidInput, ModelNotReady, Overloaded
from service.servable import ServableId, Signature, TensorInfo
from tests.conftest import wait_until
from tests.unit.fakes import checked, merging

SID = ServableId("batchtest", 1)


class Recorder:
    """A real `run`: y = 2x + 1 and the row sums; records the row count of every call.

    With `gate` set, the first call blocks until the test opens the gate, so the test can queue
    requests behind a busy batch thread deterministically (no sleeps).
    """

    def __init__(self, *, gate: bool = False, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not gate:
            self.gate.set()
        self.fail_on = fail_on

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.shape[0])
        self.started.set()
        assert self.gate.wait(10), "test never opened the gate"
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise ValueError("poisoned row")
        return {"y": 2 * x + 1, "sum": x.reshape(x.shape[0], -1).sum(axis=1)}


def rows(start: float, n: int, width: int = 3) -> np.ndarray:
    """n distinct rows: row i is filled with start + i."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], width, axis=1)


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": 2 * x + 1, "sum": x.reshape(x.shape[0], -1).sum(axis=1)}


def metric(name: str, model: str = SID.name) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


@pytest.fixture
def make_batcher() -> Iterator:
    made: list[Batcher] = []

    def factory(
        run,
        *,
        max_batch_size: int = 8,
        batch_timeout_ms: float = 5.0,
        max_enqueued_batches: int = 4,
        servable_id: ServableId = SID,
        whole_requests: bool = False,
    ) -> Batcher:
        batcher = Batcher(
            servable_id,
            run if whole_requests else merging(run),
            max_batch_size=max_batch_size,
            batch_timeout_ms=batch_timeout_ms,
            max_enqueued_batches=max_enqueued_batches,
        )
        made.append(batcher)
        return batcher

    yield factory
    for batcher in made:
        batcher.close(timeout_s=10)


def test_requests_queued_behind_a_busy_batch_run_together_and_get_their_own_rows(make_batcher) -> None:
    run = Recorder(gate=True)
    batcher = make_batcher(run, max_batch_size=16, batch_timeout_ms=0)
    first = batcher.submit(checked({"x": rows(100, 1)}))
    assert run.started.wait(10)
    sizes = [1, 2, 3, 1, 4]
    inputs = [rows(10 * i, n) for i, n in enumerate(sizes)]
    futures = [batcher.submit(checked({"x": x})) for x in inputs]
    run.gate.set()

    for x, future in zip(inputs, futures):
        result = future.result(timeout=10)
        for name, value in expected(x).items():
            np.testing.assert_array_equal(result[name], value)
    np.testing.assert_array_equal(first.result(timeout=10)["y"], expected(rows(100, 1))["y"])
    # The first request ran alone; the five queued behind it ran as one call of 11 rows.
    assert run.calls == [1, sum(sizes)]


def test_concurrent_clients_make_fewer_calls_than_requests(make_batcher) -> None:
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=32, batch_timeout_ms=200)
    barrier = threading.Barrier(24)

    def client(i: int) -> np.ndarray:
        barrier.wait()
        return batcher.submit(checked({"x": rows(i, 1)})).result(timeout=10)["y"]

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(client, range(24)))
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, expected(rows(i, 1))["y"])
    assert sum(run.calls) == 24
    assert len(run.calls) < 24 / 2


def test_batches_never_exceed_max_batch_size_and_a_larger_request_runs_alone(make_batcher) -> None:
    run = Recorder(gate=True)
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_ms=0)
    batcher.submit(checked({"x": rows(0, 1)}))
    assert run.started.wait(10)
    futures = [batcher.submit(checked({"x": rows(i * 10, n)})) for i, n in enumerate([3, 2, 9, 1])]
    run.gate.set()
    for future in futures:
        future.result(timeout=10)
    # 3 fits alone (3+2 > 4); 2 waits for the next batch; 9 > max runs alone; 1 after it.
    assert run.calls == [1, 3, 2, 9, 1]


# A gate, not a clock: the batch timeout is ten minutes, so a batcher that waited for it would fail
# `result(timeout=30)`, however busy the host.
def test_a_full_batch_runs_without_waiting_for_the_timeout(make_batcher) -> None:
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_ms=600_000)
    batcher.submit(checked({"x": rows(0, 4)})).result(timeout=30)
    assert run.calls == [4]


def test_a_batch_filled_by_several_requests_runs_without_waiting_for_the_timeout(make_batcher) -> None:
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_ms=600_000)
    futures = [batcher.submit(checked({"x": rows(i, 1)})) for i in range(4)]
    for future in futures:
        future.result(timeout=30)
    assert run.calls == [4]


def test_a_lone_request_waits_at_most_the_timeout(make_batcher) -> None:
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=300)
    started = time.monotonic()
    batcher.submit(checked({"x": rows(0, 1)})).result(timeout=10)
    elapsed = time.monotonic() - started
    # It waited for company (the lower bound is the property), then ran. The upper bound is generous: on a busy
    # 2-core host the batch thread may wait seconds for a core; a batcher that waited for a second request
    # instead of its deadline would never answer and fail `result(timeout=10)`.
    assert 0.29 <= elapsed < 0.3 + 5.0
    assert run.calls == [1]


def test_with_timeout_zero_a_lone_request_does_not_wait(make_batcher) -> None:
    batcher = make_batcher(Recorder(), max_batch_size=8, batch_timeout_ms=0)
    batcher.submit(checked({"x": rows(0, 1)})).result(timeout=10)  # thread warm
    started = time.monotonic()
    for i in range(20):
        batcher.submit(checked({"x": rows(i, 1)})).result(timeout=10)
    # Generous (a busy 2-core host may hold the batch thread off a core for a while): 20 requests in 10 s
    # rules out waiting for company, which with timeout 0 has no deadline to stop it but the next request.
    assert time.monotonic() - started < 10


def test_a_full_queue_raises_overloaded_and_counts_it(make_batcher) -> None:
    run = Recorder(gate=True)
    batcher = make_batcher(
        run, max_batch_size=2, batch_timeout_ms=0, max_enqueued_batches=2, servable_id=ServableId("overload", 1)
    )
    running = batcher.submit(checked({"x": rows(0, 1)}))
    assert run.started.wait(10)
    queued = [
        batcher.submit(checked({"x": rows(1, 2)})),
        batcher.submit(checked({"x": rows(3, 1)})),
        batcher.submit(checked({"x": rows(4, 1)})),
    ]
    before = metric("kerasserve_rejected_total", "overload")
    with pytest.raises(Overloaded, match="overload"):
        batcher.submit(checked({"x": rows(5, 1)}))
    assert metric("kerasserve_rejected_total", "overload") == before + 1
    run.gate.set()
    for future in [running, *queued]:
        future.result(timeout=10)
    batcher.submit(checked({"x": rows(6, 2)})).result(timeout=10)  # room again once drained


def test_a_failed_batch_runs_each_request_alone_so_only_the_bad_one_fails(make_batcher) -> None:
    sid = ServableId("isolation", 1)
    run = Recorder(gate=True, fail_on=-1.0)
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0, servable_id=sid)
    batcher.submit(checked({"x": rows(0, 1)}))
    assert run.started.wait(10)
    retries = metric("kerasserve_batch_retries_total", "isolation")
    isolated = metric("kerasserve_batch_isolated_failures_total", "isolation")
    inputs = [rows(10, 2), rows(-1, 1), rows(20, 1)]
    futures = [batcher.submit(checked({"x": x})) for x in inputs]
    run.gate.set()

    with pytest.raises(ValueError, match="poisoned row"):
        futures[1].result(timeout=10)
    for i in (0, 2):
        np.testing.assert_array_equal(futures[i].result(timeout=10)["y"], expected(inputs[i])["y"])
    # One call of the three requests (4 rows) failed, then one call per request.
    assert run.calls == [1, 4, 2, 1, 1]
    assert metric("kerasserve_batch_retries_total", "isolation") == retries + 1
    assert metric("kerasserve_batch_isolated_failures_total", "isolation") == isolated + 1
    after = batcher.submit(checked({"x": rows(7, 2)})).result(timeout=10)
    np.testing.assert_array_equal(after["y"], expected(rows(7, 2))["y"])
    assert batcher.health() == ""


def test_a_lone_failing_request_gets_its_error_without_a_retry(make_batcher) -> None:
    run = Recorder(fail_on=-1.0)
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0, servable_id=ServableId("lone", 1))
    retries = metric("kerasserve_batch_retries_total", "lone")
    with pytest.raises(ValueError, match="poisoned row"):
        batcher.submit(checked({"x": rows(-1, 2)})).result(timeout=10)
    assert run.calls == [2]
    assert metric("kerasserve_batch_retries_total", "lone") == retries


def test_outputs_that_cannot_be_split_fail_every_request_of_the_batch_without_a_retry(make_batcher) -> None:
    from service.errors import InferenceError

    calls: list[int] = []
    gate = threading.Event()

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape[0])
        gate.wait(10)
        return {"total": np.asarray(inputs["x"].sum())}  # one value for the whole batch

    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0)
    batcher.submit(checked({"x": rows(0, 1)}))
    wait_until(lambda: calls)
    futures = [batcher.submit(checked({"x": rows(1, 2)})), batcher.submit(checked({"x": rows(3, 1)}))]
    gate.set()
    for future in futures:
        with pytest.raises(InferenceError, match="cannot be split between requests"):
            future.result(timeout=10)
    assert calls == [1, 3]


class MemoryHungry:
    """A `run` that really runs out of memory on rows holding -1: numpy cannot allocate 4 EiB.

    Not a mock: the MemoryError comes from a real allocation, as it would from a model or from the
    runner's merge of a batch's rows when the host is out of memory.
    """

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(x.shape[0])
        if np.any(x == -1):
            np.zeros(2**62, dtype=np.uint8)
        return expected(x)


def test_a_memory_error_kills_the_batch_loop_which_restarts_logs_and_counts_it(make_batcher, caplog) -> None:
    from service.errors import InferenceError

    run = MemoryHungry()
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0, servable_id=ServableId("hungry", 1))
    restarts = metric("kerasserve_batcher_restarts_total", "hungry")
    with caplog.at_level("ERROR", logger="service.batching"), pytest.raises(InferenceError, match="MemoryError"):
        batcher.submit(checked({"x": rows(-1, 1)})).result(timeout=10)
    # Logged (with the traceback) and counted before the request was failed.
    assert any("batch thread died" in r.message and "restarting" in r.message and r.exc_info for r in caplog.records)
    assert metric("kerasserve_batcher_restarts_total", "hungry") == restarts + 1
    # The thread kept going: the next requests are answered, and the batcher reports no problem.
    for i in range(3):
        np.testing.assert_array_equal(
            batcher.submit(checked({"x": rows(i, 2)})).result(timeout=10)["y"], expected(rows(i, 2))["y"]
        )
    assert batcher.health() == ""
    assert "batcher-hungry:1" in {t.name for t in threading.enumerate()}


def test_a_batch_loop_that_keeps_dying_gives_up_and_reports_it(make_batcher) -> None:
    from service.errors import InferenceError

    run = MemoryHungry()
    batcher = Batcher(
        ServableId("doomed", 1),
        merging(run),
        max_batch_size=8,
        batch_timeout_ms=0,
        max_enqueued_batches=4,
        max_restarts=2,
        restart_window_s=60,
    )
    try:
        restarts = metric("kerasserve_batcher_restarts_total", "doomed")
        for _ in range(2):
            with pytest.raises(InferenceError):
                batcher.submit(checked({"x": rows(-1, 1)})).result(timeout=10)
            assert batcher.health() == ""
        with pytest.raises(InferenceError):
            batcher.submit(checked({"x": rows(-1, 1)})).result(timeout=10)  # the third death within the window
        wait_until(lambda: batcher.health())
        assert "died 3 times within 60s (last: MemoryError)" in batcher.health()
        assert metric("kerasserve_batcher_restarts_total", "doomed") == restarts + 3
        with pytest.raises(ModelNotReady, match="stopped serving: it died 3 times"):
            batcher.submit(checked({"x": rows(1, 1)}))
        wait_until(lambda: "batcher-doomed:1" not in {t.name for t in threading.enumerate()})
    finally:
        batcher.close(timeout_s=10)


def test_requests_queued_when_the_loop_gives_up_fail_with_model_not_ready(make_batcher) -> None:
    gate = threading.Event()
    started = threading.Event()

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        gate.wait(10)
        np.zeros(2**62, dtype=np.uint8)
        return expected(inputs["x"])

    batcher = Batcher(
        ServableId("giveup", 1),
        merging(run),
        max_batch_size=2,
        batch_timeout_ms=0,
        max_enqueued_batches=4,
        max_restarts=0,
        restart_window_s=60,
    )
    try:
        first = batcher.submit(checked({"x": rows(0, 1)}))
        assert started.wait(10)
        queued = batcher.submit(checked({"x": rows(1, 2)}))
        gate.set()
        assert "InferenceError" == type(first.exception(timeout=10)).__name__
        with pytest.raises(ModelNotReady, match="giveup"):
            queued.result(timeout=10)
        assert "died 1 time within 60s" in batcher.health()
    finally:
        batcher.close(timeout_s=10)


def test_requests_with_different_row_shapes_or_dtypes_run_in_separate_batches(make_batcher) -> None:
    seen: list[tuple[tuple[int, ...], str]] = []
    gate = threading.Event()
    started = threading.Event()

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append((inputs["x"].shape, inputs["x"].dtype.str))
        started.set()
        gate.wait(10)
        return expected(inputs["x"])

    batcher = make_batcher(run, max_batch_size=16, batch_timeout_ms=0)
    batcher.submit(checked({"x": rows(0, 1)}))
    assert started.wait(10)
    inputs = [
        rows(1, 2, width=3),
        rows(3, 1, width=5),
        rows(4, 1, width=3),
        rows(5, 2, width=5),
        rows(7, 1, width=3).astype(np.float64),
    ]
    futures = [batcher.submit(checked({"x": x})) for x in inputs]
    gate.set()
    for x, future in zip(inputs, futures):
        np.testing.assert_array_equal(future.result(timeout=10)["y"], expected(x)["y"])
    assert seen[1:] == [((3, 3), "<f4"), ((3, 5), "<f4"), ((1, 3), "<f8")]


def test_metrics_count_batches_rows_and_queue_time(make_batcher) -> None:
    sid = ServableId("metrics", 3)
    run = Recorder(gate=True)
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0, servable_id=sid)
    batches = metric("kerasserve_batches_total", "metrics")
    rows_sum = metric("kerasserve_batch_rows_sum", "metrics")
    queued = metric("kerasserve_batch_queue_seconds_count", "metrics")
    futures = [batcher.submit(checked({"x": rows(0, 2)}))]
    assert run.started.wait(10)
    futures += [batcher.submit(checked({"x": rows(1, 3)})), batcher.submit(checked({"x": rows(2, 1)}))]
    run.gate.set()
    for future in futures:
        future.result(timeout=10)
    assert metric("kerasserve_batches_total", "metrics") == batches + 2
    assert metric("kerasserve_batch_rows_sum", "metrics") == rows_sum + 6
    assert metric("kerasserve_batch_queue_seconds_count", "metrics") == queued + 3
    assert metric("kerasserve_batch_compute_seconds_count", "metrics") >= 2


def test_close_runs_queued_requests_refuses_new_ones_stops_the_thread_and_can_be_repeated(make_batcher) -> None:
    run = Recorder(gate=True)
    batcher = make_batcher(run, max_batch_size=4, batch_timeout_ms=0, servable_id=ServableId("closing", 2))
    running = batcher.submit(checked({"x": rows(0, 1)}))
    assert run.started.wait(10)
    queued = batcher.submit(checked({"x": rows(1, 2)}))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    # close() waits for the queue to drain; new requests are refused meanwhile.

    def refused() -> bool:
        try:
            batcher.submit(checked({"x": rows(2, 1)}))
        except ModelNotReady:
            return True
        return False

    wait_until(refused, timeout_s=10)
    run.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    np.testing.assert_array_equal(queued.result(timeout=0)["y"], expected(rows(1, 2))["y"])
    running.result(timeout=0)
    assert "batcher-closing:2" not in {t.name for t in threading.enumerate()}
    batcher.close()
    with pytest.raises(ModelNotReady, match="closing"):
        batcher.submit(checked({"x": rows(0, 1)}))


def test_a_cancelled_request_is_not_computed(make_batcher) -> None:
    run = Recorder(gate=True)
    batcher = make_batcher(run, max_batch_size=8, batch_timeout_ms=0)
    batcher.submit(checked({"x": rows(0, 1)}))
    assert run.started.wait(10)
    gave_up = batcher.submit(checked({"x": rows(1, 5)}))
    kept = batcher.submit(checked({"x": rows(9, 2)}))
    assert gave_up.cancel()
    run.gate.set()
    np.testing.assert_array_equal(kept.result(timeout=10)["y"], expected(rows(9, 2))["y"])
    assert run.calls == [1, 2]


def test_inputs_without_rows_or_with_different_row_counts_never_reach_the_batcher() -> None:
    # The boundary refuses them (the batcher trusts the ModelInputs it is given and checks nothing again).
    with pytest.raises(InvalidInput, match="is empty"):
        checked({"x": np.zeros((0, 3), np.float32)})
    with pytest.raises(InvalidInput, match="different batch sizes"):
        checked({"x": np.zeros((2, 3), np.float32), "z": np.zeros((3, 3), np.float32)})
    with pytest.raises(InvalidInput, match="needs a batch dimension"):
        checked({"x": np.asarray(np.float32(1.0))})


def test_batched_results_of_a_real_keras_model_equal_its_unbatched_results(make_batcher, tmp_path) -> None:
    import keras

    from service.custom_objects import CustomObjectRegistry
    from service.loader import Loader
    from service.runner import InferenceRunner, default_allowed_batch_sizes
    from service.settings import Settings

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    model.save(tmp_path / "tiny.keras")
    loaded = Loader(CustomObjectRegistry(), Settings(models_dir=tmp_path)).load(tmp_path / "tiny.keras")
    try:
        runner = InferenceRunner(
            loaded, loaded.default_signature, device="/CPU:0", allowed_batch_sizes=default_allowed_batch_sizes(16)
        )
        runner.warm_up()
        input_name = loaded.signature.inputs[0].name
        output_name = loaded.signature.outputs[0].name
        rng = np.random.default_rng(1)
        requests = [rng.normal(size=(n, 8, 8, 3)).astype(np.float32) for n in [1, 3, 1, 2, 5, 1, 4, 1, 2, 1, 6, 1]]
        unbatched = [runner.run([checked({input_name: x}, loaded.signature)])[output_name] for x in requests]

        calls: list[int] = []

        def counted(requests):
            calls.append(sum(r.rows for r in requests))
            return runner.run(requests)

        batcher = make_batcher(counted, max_batch_size=16, batch_timeout_ms=200, whole_requests=True)
        barrier = threading.Barrier(len(requests))

        def client(x: np.ndarray) -> np.ndarray:
            barrier.wait()
            return batcher.submit(checked({input_name: x}, loaded.signature)).result(timeout=30)[output_name]

        with ThreadPoolExecutor(len(requests)) as pool:
            batched = list(pool.map(client, requests))
        assert sum(calls) == sum(x.shape[0] for x in requests)
        assert len(calls) < len(requests)
        for x, alone, together in zip(requests, unbatched, batched):
            assert together.shape == (x.shape[0], 4)
            np.testing.assert_allclose(together, alone, atol=1e-5)
        # distinct inputs gave distinct outputs: a mix-up of rows between requests would show
        assert len({r.tobytes() for r in batched}) == len(requests)
    finally:
        loaded.close()


def test_one_out_of_range_embedding_index_fails_only_its_request_in_a_batch_of_a_real_keras_model(
    make_batcher, tmp_path
) -> None:
    import keras

    from service.custom_objects import CustomObjectRegistry
    from service.loader import Loader
    from service.runner import InferenceRunner, default_allowed_batch_sizes
    from service.settings import Settings

    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 2),  # indices 0..4
            keras.layers.Flatten(),
        ]
    )
    model.save(tmp_path / "embedding.keras")
    loaded = Loader(CustomObjectRegistry(), Settings(models_dir=tmp_path)).load(tmp_path / "embedding.keras")
    try:
        runner = InferenceRunner(
            loaded, loaded.default_signature, device="/CPU:0", allowed_batch_sizes=default_allowed_batch_sizes(16)
        )
        runner.warm_up()
        input_name = loaded.signature.inputs[0].name
        output_name = loaded.signature.outputs[0].name
        good = [
            np.array([[0, 1, 2]]),
            np.array([[4, 3, 2], [1, 1, 1]]),
            np.array([[2, 2, 0]]),
            np.array([[3, 0, 4], [0, 0, 0], [4, 4, 4]]),
        ]
        bad = np.array([[1, 2, 3], [0, 7, 1]])  # row 1 of this request holds index 7
        alone = [runner.run([checked({input_name: x}, loaded.signature)])[output_name] for x in good]

        calls: list[int] = []
        gate = threading.Event()

        def gated(requests):
            calls.append(sum(r.rows for r in requests))
            assert gate.wait(10)
            return runner.run(requests)

        sid = ServableId("embedding", 1)
        batcher = make_batcher(gated, max_batch_size=16, batch_timeout_ms=0, servable_id=sid, whole_requests=True)
        retries = metric("kerasserve_batch_retries_total", "embedding")
        isolated = metric("kerasserve_batch_isolated_failures_total", "embedding")
        batcher.submit(checked({input_name: np.array([[0, 0, 0]])}, loaded.signature))
        wait_until(lambda: calls)
        # Concurrent clients queue behind the busy thread (pool.map returns once all five are queued):
        # the five requests form one batch of 9 rows.
        requests = [*good[:2], bad, *good[2:]]
        barrier = threading.Barrier(len(requests))

        def client(x: np.ndarray):
            barrier.wait()
            return batcher.submit(checked({input_name: x}, loaded.signature))

        with ThreadPoolExecutor(len(requests)) as pool:
            futures = list(pool.map(client, requests))
        gate.set()

        error = futures[2].exception(timeout=30)
        assert isinstance(error, InvalidInput)
        # The error names the problem in the request's own rows (not its place in the batch).
        assert str(error) == "the model rejected the input: indices[1,1] = 7 is not in [0, 5)"
        for future, x, expected_output in zip([*futures[:2], *futures[3:]], good, alone):
            result = future.result(timeout=30)[output_name]
            assert result.shape == (x.shape[0], 6)
            np.testing.assert_allclose(result, expected_output, atol=1e-6)
        assert calls[:2] == [1, 9]  # the lone request, then the five together
        assert sorted(calls[2:]) == sorted(x.shape[0] for x in requests)  # then each alone
        assert metric("kerasserve_batch_retries_total", "embedding") == retries + 1
        assert metric("kerasserve_batch_isolated_failures_total", "embedding") == isolated + 1
    finally:
        loaded.close()


def _signature(*inputs: TensorInfo, batched: bool = True) -> Signature:
    return Signature("serving_default", inputs, (TensorInfo("y", "float32", (None, 10)),), batched=batched)


LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def test_input_bytes_per_row_counts_every_input_unknown_dimensions_as_one_and_strings_as_nothing() -> None:
    image = TensorInfo("image", "float32", (None, 224, 224, 3))
    assert input_bytes_per_row(_signature(image)) == 224 * 224 * 3 * 4
    assert input_bytes_per_row(_signature(TensorInfo("ids", "int64", (None, None)))) == 8
    two = _signature(TensorInfo("a", "uint8", (None, 28, 28, 1)), TensorInfo("b", "float16", (None, 5)))
    assert input_bytes_per_row(two) == 28 * 28 + 10
    assert input_bytes_per_row(_signature(TensorInfo("text", "string", (None,)))) == 0


def test_capped_batch_sizes_keep_the_sizes_whose_inputs_fit_the_budget() -> None:
    mobilenet = _signature(TensorInfo("image", "float32", (None, 224, 224, 3)))  # 588 KiB per row
    assert capped_batch_sizes(LADDER, mobilenet, 3 * 2**20) == (1, 2, 3, 4)
    small_cnn = _signature(TensorInfo("image", "float32", (None, 28, 28, 1)))  # 3 KiB per row
    assert capped_batch_sizes(LADDER, small_cnn, 3 * 2**20) == LADDER
    huge = _signature(TensorInfo("image", "float32", (None, 2000, 2000, 3)))
    assert capped_batch_sizes(LADDER, huge, 3 * 2**20) == (1,)  # never below one row
    assert capped_batch_sizes(LADDER, mobilenet, 0) == LADDER  # 0: no cap
    assert capped_batch_sizes(LADDER, _signature(TensorInfo("text", "string", (None,))), 1) == LADDER


def test_the_builder_warms_up_a_large_row_model_only_for_the_sizes_that_fit_unless_its_config_says(
    tmp_path, caplog
) -> None:
    import keras

    from service.builder import ServableBuilder
    from service.model_config import BatchingConfig, ModelConfig
    from service.repository import VersionSource
    from service.settings import Settings

    path = tmp_path / "large_rows.keras"  # 256x256x3 float32: 768 KiB per row
    keras.Sequential(
        [
            keras.Input((256, 256, 3), name="image"),
            keras.layers.Conv2D(2, 3, strides=8),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, name="y"),
        ]
    ).save(path)
    builder = ServableBuilder(Settings(models_dir=tmp_path, workers=1, max_batch_size=32))
    builder.start()
    builder.rebuild_registry()
    configs = {1: ModelConfig(), 2: ModelConfig(batching=BatchingConfig(max_batch_size=6))}
    caplog.set_level("INFO", logger="service.builder")
    for version, config in configs.items():
        source = VersionSource(ServableId("large_rows", version), path, f"v{version}", config)
        servable = builder.build(source)
        try:
            result = servable.submit["serving_default"](
                checked({"image": np.zeros((9, 256, 256, 3), np.float32)})
            ).result(60)
            assert result["y"].shape == (9, 2)  # more rows than the largest size: run in chunks
        finally:
            servable.close()
    sizes = [
        r.getMessage().split("batch sizes ")[1].split(";")[0] for r in caplog.records if "batch sizes" in r.getMessage()
    ]
    assert sizes == ["1,2,3,4", "1,2,3,4,6"]  # 3 MiB of inputs per call by default; the config wins
