"""The schedulers with a stand-in backend: batches formed and split, bounded queues,
timeouts; and batching through the whole server."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelpilot_runtime.backends.base import BackendInfo
from modelpilot_runtime.batching.scheduler import DirectScheduler, DynamicBatcher, Runner
from modelpilot_runtime.config import BatchingSettings
from modelpilot_runtime.errors import BackendError, RejectedError
from modelpilot_runtime.metrics import Metrics
from modelpilot_runtime.tensors import Array, TensorSpec
from tests.unit.runtime.conftest import run_server, send_while_held


class DoublingBackend:
    """Returns 2 * x; records every batch it was given; can be held to build up a queue."""

    def __init__(self) -> None:
        self.info = BackendInfo(
            "test", "CPU", [TensorSpec("x", "FP32", (-1, 2))], [], batchable=True
        )
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def load(self) -> BackendInfo:
        return self.info

    def warmup(self, runs: int, batch_sizes: list[int]) -> None:
        return None

    def predict(self, inputs: dict[str, Array], outputs: list[str] | None) -> dict[str, Array]:
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(int(inputs["x"].shape[0]))
        return {"y": inputs["x"] * 2, "n": np.full((inputs["x"].shape[0],), len(self.batches))}

    def unload(self) -> None:
        return None


def make_runner(backend: DoublingBackend, inline: bool = True) -> tuple[Runner, Metrics]:
    metrics = Metrics()
    executor = None if inline else ThreadPoolExecutor(1)
    return Runner(backend, metrics.for_version("m", "1"), inline, executor, None, None), metrics


def rows(start: int, n: int = 1, width: int = 2) -> dict[str, Array]:
    return {"x": np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_batches_are_formed_and_split_back() -> None:
    backend = DoublingBackend()
    runner, metrics = make_runner(backend)

    async def scenario() -> list[dict[str, Array]]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=4, max_delay_ms=50))
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(rows(10 * i), None, 1) for i in range(6)))
        await batcher.close()
        return list(results)

    results = run(scenario())
    # Six requests, at most four rows a batch: one full batch, then the rest at once (nothing
    # more arrives, so they do not wait for the delay).
    assert backend.batches == [4, 2]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(10 * i)["x"] * 2)
    assert [int(r["n"][0]) for r in results] == [1, 1, 1, 1, 2, 2]
    hist = metrics.registry.get_sample_value(
        "modelpilot_inference_batch_size_sum", {"model": "m", "version": "1"}
    )
    assert hist == 6  # batch sizes are counted in requests: 4 + 2
    assert (
        metrics.registry.get_sample_value(
            "modelpilot_inference_batch_size_count", {"model": "m", "version": "1"}
        )
        == 2
    )


def test_requests_of_several_rows_and_incompatible_shapes() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> list[dict[str, Array]]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=8, max_delay_ms=20))
        batcher.start()
        jobs = [
            batcher.submit(rows(0, n=3), None, 3),
            batcher.submit(rows(100, n=1, width=5), None, 1),  # another inner shape: its own batch
            batcher.submit(rows(50, n=2), None, 2),
        ]
        results = await asyncio.gather(*jobs)
        await batcher.close()
        return list(results)

    first, odd, third = run(scenario())
    assert sorted(backend.batches) == [1, 5]
    np.testing.assert_array_equal(first["y"], rows(0, n=3)["x"] * 2)
    np.testing.assert_array_equal(third["y"], rows(50, n=2)["x"] * 2)
    np.testing.assert_array_equal(odd["y"], rows(100, n=1, width=5)["x"] * 2)


def test_full_queue_rejects_at_once_with_429() -> None:
    backend = DoublingBackend()
    backend.gate.clear()  # the model is busy: the queue fills up
    runner, _ = make_runner(backend, inline=False)

    async def scenario() -> tuple[list[Any], int]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=2, max_queue=3))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0), None, 1))
        await asyncio.sleep(0.05)  # the first request is now running (held at the gate)
        queued = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(RejectedError) as info:
            await batcher.submit(rows(9), None, 1)
        pending = batcher.pending
        backend.gate.set()
        done = await asyncio.gather(first, *queued)
        await batcher.close()
        assert info.value.status == 429
        assert info.value.reason == "queue_full"
        assert "queue full (3 requests waiting" in info.value.message
        return list(done), pending

    done, pending = run(scenario())
    assert pending == 3
    assert len(done) == 4


def test_request_waiting_past_its_timeout_is_rejected() -> None:
    backend = DoublingBackend()
    backend.gate.clear()
    runner, _ = make_runner(backend, inline=False)

    async def scenario() -> None:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=1, timeout_ms=10))
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0), None, 1))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit(rows(1), None, 1))
        # Answered once its 10 ms pass, while the model is still busy with `first`.
        with pytest.raises(RejectedError) as info:
            await late
        assert not first.done()
        backend.gate.set()
        await first
        assert info.value.status == 503
        assert info.value.reason == "timeout"
        await batcher.close()

    run(scenario())


def test_backend_failure_reaches_every_request_of_the_batch() -> None:
    backend = DoublingBackend()
    backend.fail = True
    runner, _ = make_runner(backend)

    async def scenario() -> list[Any]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=4, max_delay_ms=5))
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(rows(i), None, 1) for i in range(3)), return_exceptions=True
        )
        await batcher.close()
        return list(results)

    results = run(scenario())
    assert all(isinstance(r, BackendError) and "boom" in r.message for r in results)


def test_direct_scheduler_bounds_requests_in_flight() -> None:
    backend = DoublingBackend()
    backend.gate.clear()
    runner, _ = make_runner(backend, inline=False)

    async def scenario() -> None:
        direct = DirectScheduler(runner, BatchingSettings(max_queue=2))
        jobs = [asyncio.ensure_future(direct.submit(rows(i), None, 1)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RejectedError) as info:
            await direct.submit(rows(5), None, 1)
        assert info.value.status == 429
        backend.gate.set()
        await asyncio.gather(*jobs)

    run(scenario())


def test_batching_through_the_server(sample_repo: Path) -> None:
    defaults = {"batching": {"max_batch_size": 16, "max_delay_ms": 30}}

    def body(i: int) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [i] * 8}]}

    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        # The requests reach the server together, as they would behind a busy model, and
        # share batches. (Requests that reach an idle model one by one run one by one: see
        # the tests above.)
        held = send_while_held(srv, "/v2/models/tiny/infer", [body(i) for i in range(12)])
        assert all(status == 200 for status, _ in held)
        answers = [doc["outputs"][0]["data"] for _, doc in held]
        with httpx.Client(base_url=srv.url) as client:
            single = [
                client.post("/v2/models/tiny/infer", json=body(i)).json()["outputs"][0]["data"]
                for i in range(12)
            ]
            metrics = client.get("/metrics").text
    assert answers == single
    count = [
        line
        for line in metrics.splitlines()
        if line.startswith("modelpilot_inference_batch_size_count")
    ]
    batches = float(count[0].split()[-1])
    assert batches < 24  # some of the 12 concurrent requests shared a batch


def test_overload_through_the_server_answers_429_not_5xx(sample_repo: Path) -> None:
    defaults = {"batching": {"max_batch_size": 2, "max_delay_ms": 200, "max_queue": 2}}
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        # The 20 requests reach the server together (as behind a busy model), so they meet a
        # queue of 2 whatever the client's timing: the first runs at once (the model is
        # idle), two queue, the rest are refused.
        answers = send_while_held(srv, "/v2/models/tiny/infer", [body] * 20)
        with httpx.Client(base_url=srv.url) as client:
            metrics = client.get("/metrics").text
    codes = sorted(status for status, _ in answers)
    assert set(codes) == {200, 429}
    rejected = [doc for status, doc in answers if status == 429]
    assert "queue full" in rejected[0]["error"]
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("modelpilot_inference_rejected_total") and "queue_full" in x
    )
    assert float(line.split()[-1]) == len(rejected)


class PoisonBackend(DoublingBackend):
    """Fails any run whose batch holds a negative value, as a model fails on an input out of
    its domain: a batch with one such row fails as a whole."""

    def predict(self, inputs: dict[str, Array], outputs: list[str] | None) -> dict[str, Array]:
        if (inputs["x"] < 0).any():
            raise RuntimeError("negative input")
        return super().predict(inputs, outputs)


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered() -> None:
    backend = PoisonBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> list[Any]:
        # The batch is full at 8 requests and runs at once: all 8 share it.
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=8, max_delay_ms=10_000))
        batcher.start()
        inputs = [rows(10 * i) for i in range(8)]
        inputs[5] = {"x": np.array([[1.0, -1.0]], dtype=np.float32)}
        results = await asyncio.gather(
            *(batcher.submit(x, None, 1) for x in inputs), return_exceptions=True
        )
        await batcher.close()
        return list(results)

    results = run(scenario())
    for i, result in enumerate(results):
        if i == 5:
            assert isinstance(result, BackendError)
            assert "negative input" in result.message
        else:
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], rows(10 * i)["x"] * 2)


def test_a_request_out_of_the_models_domain_gets_400_and_its_batch_mates_200(
    tmp_path: Path,
) -> None:
    from modelpilot_runtime.samples import write_repository

    repo = write_repository(tmp_path, ["lookup"])
    defaults = {"batching": {"max_batch_size": 8, "max_delay_ms": 10_000}}
    with run_server(models={"lookup": repo / "lookup"}, model_defaults=defaults) as srv:

        def body(ids: list[int]) -> dict[str, Any]:
            return {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": ids}]}

        async def burst() -> list[httpx.Response]:
            # A full batch of 8 runs at once: the bad request shares it with 7 good ones.
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                ids = [[i % 4, (i + 1) % 4] for i in range(8)]
                ids[3] = [0, 9]  # 9 is outside the 4-row table
                return list(
                    await asyncio.gather(
                        *(client.post("/v2/models/lookup/infer", json=body(x)) for x in ids)
                    )
                )

        responses = asyncio.run(burst())
        metrics = httpx.get(srv.url + "/metrics").text
    for i, response in enumerate(responses):
        if i == 3:
            assert response.status_code == 400, response.text
            assert "refused the input" in response.json()["error"]
        else:
            assert response.status_code == 200, response.text
            a, b = i % 4, (i + 1) % 4
            expected = [3.0 * a, 3.0 * a + 1, 3.0 * a + 2, 3.0 * b, 3.0 * b + 1, 3.0 * b + 2]
            assert response.json()["outputs"][0]["data"] == expected
    assert 'code="500"' not in metrics


def test_requests_that_timed_out_do_not_count_against_max_queue() -> None:
    backend = DoublingBackend()
    backend.gate.clear()
    runner, _ = make_runner(backend, inline=False)

    async def scenario() -> list[Any]:
        settings = BatchingSettings(max_batch_size=1, max_queue=2, timeout_ms=20)
        batcher = DynamicBatcher(runner, settings)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0), None, 1))
        while not batcher._running:  # until the first request is taken and held at the gate
            await asyncio.sleep(0.001)
        expired = await asyncio.gather(
            *(batcher.submit(rows(i), None, 1) for i in (1, 2)), return_exceptions=True
        )
        assert all(isinstance(e, RejectedError) and e.reason == "timeout" for e in expired)
        assert batcher.pending == 0
        # The two expired requests still sit in the deque (the worker is busy): they must
        # not fill the queue for the next ones.
        later = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in (3, 4)]
        await asyncio.sleep(0)
        backend.gate.set()
        results = await asyncio.gather(first, *later, return_exceptions=True)
        await batcher.close()
        return list(results)

    results = run(scenario())
    assert not any(isinstance(r, RejectedError) and r.reason == "queue_full" for r in results)


def test_a_failed_batch_worker_answers_503_and_is_restarted() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> tuple[BaseException | None, dict[str, Array], int]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=4))
        original = batcher._take
        calls = 0

        def take_once_broken() -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("worker bug")
            return original()

        batcher._take = take_once_broken  # type: ignore[method-assign]
        batcher.start()
        failed: BaseException | None = None
        try:
            await batcher.submit(rows(0), None, 1)
        except RejectedError as exc:
            failed = exc
        result = await batcher.submit(rows(1), None, 1)
        await batcher.close()
        return failed, result, batcher.restarts

    failed, result, restarts = run(scenario())
    assert isinstance(failed, RejectedError)
    assert failed.status == 503
    assert failed.reason == "worker_failed"
    np.testing.assert_array_equal(result["y"], rows(1)["x"] * 2)
    assert restarts == 1


# -- adaptive batching: when the batcher waits and when it does not ---------------------------
# These count loop turns and read the dispatch reason; none measures wall time. A batcher that
# waited for its 60 s delay would not be done within the turns given.

LONG_DELAY = BatchingSettings(max_batch_size=32, max_delay_ms=60_000)


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_lone_request_runs_at_once_not_after_the_delay() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        for i in range(3):  # one request at a time, each answered before the next is sent
            job = asyncio.ensure_future(batcher.submit(rows(i), None, 1))
            await turns(6)
            assert job.done(), "a lone request waited for max_delay"
            np.testing.assert_array_equal(job.result()["y"], rows(i)["x"] * 2)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    assert backend.batches == [1, 1, 1]
    assert batcher.dispatched == {"idle": 3}
    assert batcher.last_dispatch == "idle"


def test_requests_sent_together_to_an_idle_model_run_together_at_once() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in range(5)]
        await turns(6)
        assert all(job.done() for job in jobs)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    assert backend.batches == [5]
    assert batcher.dispatched == {"idle": 1}


def test_requests_that_came_while_the_model_was_busy_run_as_soon_as_it_is_free() -> None:
    backend = DoublingBackend()
    backend.gate.clear()
    runner, _ = make_runner(backend, inline=False)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0), None, 1))
        while not batcher._running:
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in (1, 2, 3)]
        await turns(3)
        backend.gate.set()
        # Bounded by the test's timeout only: waiting out the 60 s delay would fail it.
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    assert backend.batches == [1, 3]
    assert batcher.dispatched == {"idle": 1, "busy": 1}


def test_while_requests_keep_arriving_the_batch_waits_for_them() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        # Two requests together (not a lone one), then one more every loop turn, then none.
        jobs = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in (0, 1)]
        for i in range(2, 8):
            await asyncio.sleep(0)
            jobs.append(asyncio.ensure_future(batcher.submit(rows(i), None, 1)))
        await turns(6)
        assert all(job.done() for job in jobs)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    # The first turn saw a second request arrive: the batcher kept waiting while they came,
    # and ran them all once a turn brought none.
    assert backend.batches == [8]
    assert batcher.dispatched == {"quiet": 1}


def test_arrivals_stop_waiting_when_the_batch_is_full() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=4, max_delay_ms=60_000))
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in (0, 1)]
        for i in (2, 3):
            await asyncio.sleep(0)
            jobs.append(asyncio.ensure_future(batcher.submit(rows(i), None, 1)))
        await turns(6)
        assert all(job.done() for job in jobs)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    assert backend.batches == [4]
    assert batcher.dispatched == {"full": 1}


def test_requests_arriving_without_pause_wait_at_most_max_delay() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> tuple[DynamicBatcher, int]:
        batcher = DynamicBatcher(runner, BatchingSettings(max_batch_size=10_000, max_delay_ms=1))
        batcher.start()
        jobs: list[asyncio.Future[dict[str, Array]]] = []
        jobs += [asyncio.ensure_future(batcher.submit(rows(i), None, 1)) for i in (0, 1)]
        while not batcher.dispatched:  # a new request every loop turn, until a batch runs
            await asyncio.sleep(0)
            jobs.append(asyncio.ensure_future(batcher.submit(rows(len(jobs)), None, 1)))
        await asyncio.gather(*jobs)
        await batcher.close()
        return batcher, len(jobs)

    batcher, sent = run(scenario())
    # The first batch gathered the requests of many turns and was cut by the delay.
    assert next(iter(batcher.dispatched)) == "delay"  # the first batch dispatched
    assert backend.batches[0] > 1
    assert sum(backend.batches) == sent


def test_an_idle_batcher_lets_the_caller_run_a_lone_request_in_its_own_turn() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> DynamicBatcher:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        await turns(2)  # the worker sleeps for want of requests
        for i in range(3):
            assert batcher.idle_now()
            np.testing.assert_array_equal(batcher.run_now(rows(i), None)["y"], rows(i)["x"] * 2)
            # A second request read in the same loop turn is not run by its caller.
            assert not batcher.idle_now()
            await turns(1)
        await batcher.close()
        return batcher

    batcher = run(scenario())
    assert backend.batches == [1, 1, 1]
    assert batcher.dispatched == {"now": 3}


def test_requests_read_in_one_turn_after_one_run_at_once_are_batched() -> None:
    backend = DoublingBackend()
    runner, _ = make_runner(backend)

    async def scenario() -> list[Any]:
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        await turns(2)
        # As a server reading five requests in one poll: the first finds the model idle and
        # runs at once; the four behind it queue and share the next batch.
        answers: list[Any] = []
        jobs = []
        for i in range(5):
            if batcher.idle_now():
                answers.append(batcher.run_now(rows(i), None)["y"])
            else:
                jobs.append(asyncio.ensure_future(batcher.submit(rows(i), None, 1)))
        await turns(6)
        assert all(job.done() for job in jobs)
        answers.extend(job.result()["y"] for job in jobs)
        await batcher.close()
        return answers

    answers = run(scenario())
    assert backend.batches == [1, 4]
    for i, y in enumerate(answers):
        np.testing.assert_array_equal(y, rows(i)["x"] * 2)


def test_the_caller_runs_nothing_while_requests_wait_run_in_a_thread_or_after_close() -> None:
    backend = DoublingBackend()

    async def queued() -> None:
        runner, _ = make_runner(backend)
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        await turns(2)
        job = asyncio.ensure_future(batcher.submit(rows(0), None, 1))
        await turns(1)  # submitted, not yet run
        assert batcher._queued == 1
        assert not batcher.idle_now()
        await job
        await batcher.close()
        assert not batcher.idle_now()  # closed: requests are refused instead

    async def threaded() -> None:
        runner, _ = make_runner(backend, inline=False)
        batcher = DynamicBatcher(runner, LONG_DELAY)
        batcher.start()
        await turns(2)
        assert not batcher.idle_now()  # a model run in the worker thread never blocks the loop
        await batcher.close()

    run(queued())
    run(threaded())


def test_an_idle_batched_model_answers_within_the_socket_read(sample_repo: Path) -> None:
    defaults = {"batching": {"max_batch_size": 16, "max_delay_ms": 30}}
    body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1] * 8}]}
    with run_server(models={"tiny": sample_repo / "tiny"}, model_defaults=defaults) as srv:
        served = srv.runtime.repository.get("tiny")
        batcher = served.scheduler
        assert isinstance(batcher, DynamicBatcher)
        assert srv.call(_runs_now(served))
        with httpx.Client(base_url=srv.url) as client:
            for _ in range(5):
                assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
        # One request at a time: each found the batcher idle and ran in the socket read, so
        # the worker never ran a batch.
        assert batcher.dispatched == {"now": 5}
        assert not batcher._running
        assert batcher._queued == 0


async def _runs_now(served: Any) -> bool:
    await asyncio.sleep(0)
    return bool(served.runs_now())
