"""The runtime's own gRPC transport (server/grpc_h2): HPACK decoding, HTTP/2 details a gRPC
client does not show (PING, SETTINGS, flow control, wrong content types), and what the
grpcio clients see at its edges (size limits, compression, streaming, many calls at once).
The v2 and health services themselves are tested over it in test_grpc*.py."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]

from modelpilot_runtime.server import grpc_h2 as h2
from modelpilot_runtime.server.grpc_h2 import HeaderDecoder, HPACKError
from modelpilot_runtime.server.grpc_health import SERVING, decode_response, encode_request
from modelpilot_runtime.server.proto import inference_pb2 as pb
from modelpilot_runtime.server.proto import inference_pb2_grpc as pb_grpc
from tests.unit.runtime.conftest import RunningServer, run_server

# -- HPACK ---------------------------------------------------------------------------------


def test_header_decoder_agrees_with_hpack_over_a_connection() -> None:
    """Blocks from hpack's encoder (Huffman strings, dynamic-table entries, evictions, a
    table size update) decode to what hpack's own decoder gives, block after block."""
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), HeaderDecoder()
    base = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "127.0.0.1:8081"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    for i in range(300):
        headers = [*base, ("grpc-timeout", f"{19_999_000 - i}u"), ("x-pad", "v" * (i % 97))]
        if i == 150:
            encoder.header_table_size = 256  # emits a size update in the next block
        block = encoder.encode(headers)
        assert ours.decode(block) == [(str(n), str(v)) for n, v in reference.decode(block)]


def test_header_decoder_long_integers_and_literal_forms() -> None:
    name, value = b"x-long", b"a" * 300  # lengths past the 7-bit prefix
    never = b"\x10" + bytes([len(name)]) + name + h2.hpack_int(len(value), 7) + value
    without = b"\x00" + bytes([len(name)]) + name + h2.hpack_int(len(value), 7) + value
    assert HeaderDecoder().decode(never + without) == [("x-long", "a" * 300)] * 2
    assert HeaderDecoder().decode(h2.RESPONSE_HEADERS) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
    ]


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # index 62: the dynamic table is empty
        b"\x80",  # index 0
        b"\x7f",  # truncated integer
        b"\x00\x05ab",  # truncated string
        b"\x3f\xe2\x1f",  # table size update (4097) over the 4096 the server allows
        b"\x40\x81\xff\x01a",  # Huffman string that is not one (EOS inside)
    ],
)
def test_header_decoder_refuses_bad_blocks(block: bytes) -> None:
    with pytest.raises(HPACKError):
        HeaderDecoder().decode(block)


def test_header_decoder_limits_the_decoded_list() -> None:
    decoder = HeaderDecoder(max_list=1000)
    decoder.decode(b"\x40\x01x" + h2.hpack_int(500, 7) + b"y" * 500)  # one entry of 533 bytes
    with pytest.raises(HPACKError):
        decoder.decode(b"\xbe\xbe")  # indexing repeats it past the limit


def test_timeouts_and_status_blocks() -> None:
    assert h2.parse_timeout("100m") == pytest.approx(0.1)
    assert h2.parse_timeout("2S") == 2.0
    assert h2.parse_timeout("5H") == 18000.0
    assert h2.parse_timeout("123456789S") is None  # nine digits
    assert h2.parse_timeout("1x") is None
    block = h2.status_block(3, "bad input: 100% wrong\n")
    assert HeaderDecoder().decode(block) == [
        ("grpc-status", "3"),
        ("grpc-message", "bad input: 100%25 wrong%0A"),
    ]


# -- raw HTTP/2 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(sample_repo: Path) -> Iterator[RunningServer]:
    with run_server(
        models={n: sample_repo / n for n in ("tiny", "echo")}, grpc_server="native"
    ) as s:
        yield s


class Raw:
    """A bare HTTP/2 connection to the server: frames in, frames out."""

    def __init__(self, port: int, settings: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings))
        self.buf = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    def read(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    kind, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
                    return kind, flags, sid, payload
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data

    def until(self, kind: int, sid: int | None = None) -> tuple[int, bytes]:
        while True:
            k, flags, s, payload = self.read()
            if k == kind and (sid is None or s == sid):
                return flags, payload

    def call(self, sid: int, path: str, message: bytes, content_type: str = "application/grpc"):  # type: ignore[no-untyped-def]
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", content_type),
                ("te", "trailers"),
            ]
        )
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self.sock.sendall(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block)
            + h2.frame(h2.DATA, h2.END_STREAM, sid, body)
        )

    def headers(self, payload: bytes) -> dict[str, str]:
        return {str(n): str(v) for n, v in self.decoder.decode(payload)}

    def close(self) -> None:
        self.sock.close()


def infer_request(model: str, name: str, arr: np.ndarray) -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype="FP32", shape=list(arr.shape)
    )
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[arr.tobytes()]
    )
    return bytes(request.SerializeToString())


def test_settings_are_acknowledged_and_pings_answered(srv: RunningServer) -> None:
    raw = Raw(srv.runtime.grpc_port)
    try:
        flags, payload = raw.until(h2.SETTINGS)
        assert not flags & h2.ACK
        settings = dict(struct.iter_unpack(">HL", payload))
        assert settings[h2.SETTINGS_ENABLE_PUSH] == 0
        assert settings[h2.SETTINGS_MAX_CONCURRENT_STREAMS] >= 64
        flags, _ = raw.until(h2.SETTINGS)  # the server's ACK of ours
        assert flags & h2.ACK
        raw.sock.sendall(h2.frame(h2.PING, 0, 0, b"12345678"))
        flags, payload = raw.until(h2.PING)
        assert flags & h2.ACK
        assert payload == b"12345678"
    finally:
        raw.close()


def test_unknown_method_and_wrong_content_type(srv: RunningServer) -> None:
    raw = Raw(srv.runtime.grpc_port)
    try:
        raw.call(1, "/inference.GRPCInferenceService/NoSuchMethod", b"")
        flags, payload = raw.until(h2.HEADERS, 1)
        assert flags & h2.END_STREAM  # trailers-only
        assert raw.headers(payload)["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
        raw.call(3, "/inference.GRPCInferenceService/ServerLive", b"", "application/json")
        flags, payload = raw.until(h2.HEADERS, 3)
        assert flags & h2.END_STREAM
        assert raw.headers(payload)[":status"] == "415"
    finally:
        raw.close()


def test_a_response_waits_for_the_clients_window(srv: RunningServer) -> None:
    """The client allows 100 bytes per stream: the server sends that much, then the rest
    only as WINDOW_UPDATEs come, and ends the stream with its status after the last byte."""
    window = struct.pack(">HL", h2.SETTINGS_INITIAL_WINDOW_SIZE, 100)
    raw = Raw(srv.runtime.grpc_port, window)
    try:
        x = np.random.default_rng(1).random((64, 8), dtype=np.float32)
        raw.call(1, "/inference.GRPCInferenceService/ModelInfer", infer_request("tiny", "input", x))
        got = b""
        while len(got) < 100:
            _, payload = raw.until(h2.DATA, 1)
            got += payload
        assert len(got) == 100
        raw.sock.sendall(h2.frame(h2.PING, 0, 0, b"barrier!"))
        raw_frames = []
        while True:  # nothing more for the stream before the PING's answer
            kind, flags, sid, payload = raw.read()
            if kind == h2.PING:
                break
            raw_frames.append((kind, sid))
        assert (h2.DATA, 1) not in raw_frames
        assert (h2.HEADERS, 1) not in raw_frames
        raw.sock.sendall(h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">L", 1 << 20)))
        while True:
            kind, flags, sid, payload = raw.read()
            if kind == h2.DATA and sid == 1:
                got += payload
            elif kind == h2.HEADERS and sid == 1 and flags & h2.END_STREAM:
                assert raw.headers(payload)["grpc-status"] == "0"
                break
        response = pb.ModelInferResponse.FromString(got[5:])
        out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(64, 3)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # softmax rows
    finally:
        raw.close()


def test_a_reset_stream_is_forgotten_and_the_connection_goes_on(srv: RunningServer) -> None:
    raw = Raw(srv.runtime.grpc_port)
    try:
        block = raw.encoder.encode(
            [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Watch"),
             ("content-type", "application/grpc")]
        )  # fmt: skip
        message = encode_request("")
        raw.sock.sendall(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block)
            + h2.frame(
                h2.DATA, h2.END_STREAM, 1, b"\x00" + len(message).to_bytes(4, "big") + message
            )
        )
        _, payload = raw.until(h2.DATA, 1)
        assert decode_response(payload[5:]) == SERVING
        raw.sock.sendall(h2.frame(h2.RST_STREAM, 0, 1, struct.pack(">L", h2.CANCEL)))
        raw.call(3, "/inference.GRPCInferenceService/ServerLive", b"")
        _, payload = raw.until(h2.DATA, 3)
        assert pb.ServerLiveResponse.FromString(payload[5:]).live
    finally:
        raw.close()


def test_not_http2_is_closed(srv: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.runtime.grpc_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # The server's own SETTINGS (and connection window), then GOAWAY (PROTOCOL_ERROR), then
    # the close.
    kinds = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kinds.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    assert [k for k, _ in kinds] == [h2.SETTINGS, h2.WINDOW_UPDATE, h2.GOAWAY]
    assert struct.unpack(">LL", kinds[2][1][:8])[1] == h2.PROTOCOL_ERROR


# -- through grpcio clients ----------------------------------------------------------------


def test_large_tensors_both_ways(srv: RunningServer) -> None:
    """4 MB in and out: many DATA frames, windows replenished on both sides."""
    client = grpcclient.InferenceServerClient(srv.grpc_target)
    try:
        from tests.unit.runtime.test_http_v2 import ECHO

        x = np.random.default_rng(0).random((1, 1_000_000), dtype=np.float32)
        inputs = []
        for dt, (arr, _) in ECHO.items():
            data = x if dt == "FP32" else arr
            inp = grpcclient.InferInput(f"in_{dt}", list(data.shape), dt)
            inp.set_data_from_numpy(data)
            inputs.append(inp)
        wanted = [grpcclient.InferRequestedOutput("out_FP32")]
        result = client.infer("echo", inputs, outputs=wanted)
        np.testing.assert_array_equal(result.as_numpy("out_FP32"), x)
    finally:
        client.close()


def test_a_message_over_the_limit_is_refused(sample_repo: Path) -> None:
    with run_server(
        models={"tiny": sample_repo / "tiny"}, max_body_bytes=1000, grpc_server="native"
    ) as s:
        request = pb.ModelInferRequest.FromString(
            infer_request("tiny", "input", np.ones((200, 8), np.float32))
        )
        with grpc.insecure_channel(s.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            small = pb.ModelInferRequest.FromString(
                infer_request("tiny", "input", np.ones((1, 8), np.float32))
            )
            assert stub.ModelInfer(small, timeout=10).outputs[0].name == "probabilities"


def test_compressed_messages_are_unimplemented(srv: RunningServer) -> None:
    request = pb.ModelInferRequest.FromString(
        infer_request("tiny", "input", np.zeros((64, 8), np.float32))
    )
    with grpc.insecure_channel(srv.grpc_target, compression=grpc.Compression.Gzip) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_many_calls_at_once_on_one_channel_with_batching(sample_repo: Path) -> None:
    defaults = {"batching": {"max_batch_size": 16, "max_delay_ms": 5}}
    with run_server(
        models={"tiny": sample_repo / "tiny"}, model_defaults=defaults, grpc_server="native"
    ) as s:
        rng = np.random.default_rng(3)
        xs = [rng.random((1, 8), dtype=np.float32) for _ in range(200)]
        with grpc.insecure_channel(s.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            calls = [
                stub.ModelInfer.future(
                    pb.ModelInferRequest.FromString(infer_request("tiny", "input", x)), timeout=30
                )
                for x in xs
            ]
            answers = [c.result() for c in calls]
        import onnxruntime as ort

        session = ort.InferenceSession(
            str(sample_repo / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"]
        )
        for x, answer in zip(xs, answers, strict=True):
            got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
            np.testing.assert_allclose(got, session.run(None, {"input": x})[0].ravel(), rtol=1e-5)


def test_the_grpcio_transport_still_serves(sample_repo: Path) -> None:
    with run_server(models={"tiny": sample_repo / "tiny"}, grpc_server="grpcio") as s:
        assert type(s.runtime.grpc).__module__.startswith("grpc")
        client = grpcclient.InferenceServerClient(s.grpc_target)
        try:
            assert client.is_server_ready()
            x = np.ones((2, 8), np.float32)
            inp = grpcclient.InferInput("input", [2, 8], "FP32")
            inp.set_data_from_numpy(x)
            assert client.infer("tiny", [inp]).as_numpy("probabilities").shape == (2, 3)
        finally:
            client.close()


def test_calls_from_many_threads(srv: RunningServer) -> None:
    def one(i: int) -> int:
        with grpc.insecure_channel(srv.grpc_target) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=encode_request,
                response_deserializer=decode_response,
            )
            return int(check("", timeout=10))

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(32))) == {SERVING}
