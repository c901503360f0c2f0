"""gRPC: the standard health service, and client deadlines honoured by the server."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpilot_runtime.server.grpc_health import (
    NOT_SERVING,
    SERVING,
    decode_request,
    decode_response,
    encode_request,
)
from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from tests.unit.runtime.conftest import RunningServer, run_server, wait_until
from tests.unit.runtime.test_metrics import value


def health_check(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=encode_request,
            response_deserializer=decode_response,
        )
        return int(check(service, timeout=10))


def test_request_decoding_round_trips_and_skips_unknown_fields() -> None:
    assert decode_request(encode_request("inference.GRPCInferenceService")) == (
        "inference.GRPCInferenceService"
    )
    assert decode_request(b"") == ""
    # field 2 (varint 5) before field 1
    assert decode_request(b"\x10\x05" + encode_request("x")) == "x"
    with pytest.raises(ValueError, match="truncated"):
        decode_request(b"\x0a\x05ab")


def test_health_service_follows_readiness(server: RunningServer) -> None:
    assert health_check(server.grpc_target, "") == SERVING
    assert health_check(server.grpc_target, "inference.GRPCInferenceService") == SERVING
    assert health_check(server.grpc_target, "live") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        health_check(server.grpc_target, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_service_says_not_serving_while_a_model_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with run_server(model_repository=tmp_path) as srv:
        assert health_check(srv.grpc_target, "") == NOT_SERVING
        assert health_check(srv.grpc_target, "live") == SERVING


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_a_request_past_its_deadline_is_dropped_and_counted_504(
    sample_repo: Path, transport: str
) -> None:
    # An injected latency keeps the request in the server well past the client's deadline
    # (the adaptive batcher no longer holds a lone request for its delay).
    defaults = {"faults": {"added_latency_ms": 60_000}}
    with run_server(
        models={"tiny": sample_repo / "tiny"}, model_defaults=defaults, grpc_server=transport
    ) as srv:
        tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 8])
        request = pb.ModelInferRequest(
            model_name="tiny",
            inputs=[tensor],
            raw_input_contents=[np.ones((1, 8), np.float32).tobytes()],
        )
        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
            samples: dict[str, list[tuple[dict[str, str], float]]] = {}
            text = httpx.get(srv.url + "/metrics").text
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    samples.setdefault(s.name, []).append((s.labels, s.value))
            return samples

        m = {"model": "tiny", "version": "1", "protocol": "v2-grpc"}
        # The server answers the request itself once the deadline passes (not after the
        # 60 s it is held); this waits for that count, then looks at what it was.
        wait_until(lambda: value(scrape(), "modelpilot_inference_requests_total", **m) >= 1)
        samples = scrape()
        assert value(samples, "modelpilot_inference_requests_total", code="504", **m) == 1
        assert value(samples, "modelpilot_inference_requests_total", **m) == 1
        # Dropped: the model never ran it.
        assert value(samples, "modelpilot_inference_batch_size_count", model="tiny") == 0
        assert value(samples, "modelpilot_inference_pending_requests", model="tiny") == 0


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_a_call_the_client_cancels_is_counted_once_as_499(
    sample_repo: Path, transport: str
) -> None:
    defaults = {"faults": {"added_latency_ms": 60_000}}  # held in the server until cancelled
    with run_server(
        models={"tiny": sample_repo / "tiny"}, model_defaults=defaults, grpc_server=transport
    ) as srv:
        tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 8])
        request = pb.ModelInferRequest(
            model_name="tiny",
            inputs=[tensor],
            raw_input_contents=[np.ones((1, 8), np.float32).tobytes()],
        )

        def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
            samples: dict[str, list[tuple[dict[str, str], float]]] = {}
            for family in text_string_to_metric_families(httpx.get(srv.url + "/metrics").text):
                for s in family.samples:
                    samples.setdefault(s.name, []).append((s.labels, s.value))
            return samples

        with grpc.insecure_channel(srv.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.ModelInfer.future(request)
            served = srv.runtime.repository.get("tiny")
            wait_until(lambda: served.inflight == 1)
            call.cancel()
            m = {"model": "tiny", "version": "1", "protocol": "v2-grpc"}
            wait_until(lambda: value(scrape(), "modelpilot_inference_requests_total", **m) >= 1)
        samples = scrape()
        assert value(samples, "modelpilot_inference_requests_total", code="499", **m) == 1
        assert value(samples, "modelpilot_inference_requests_total", **m) == 1
        assert value(samples, "modelpilot_inference_batch_size_count", model="tiny") == 0
