"""The runtime's own TorchServe handler, registered in place of a `.mar`'s handler.

The runtime sends TorchServe one request per batch (per worker's share of a batch when a
version has several workers), its tensors in the binary format of `wire`. This module runs
in TorchServe's Python worker. It loads the `.mar`'s own handler (the one its MANIFEST.json
names, found the way TorchServe finds it), hands it the batch's rows as the requests it was
written for (one per row, in the config's `request_format`, as TorchServe would have
delivered them one by one), and sends all of its answers back as tensors in one message.
The `.mar` stays as it is: its handler sees the rows of a batch together, in one call, as
it saw TorchServe's own batches.

What TorchServe did for each row before is done here for the whole batch: the request
bodies (a decoded JSON object for `json`, the bytes for `raw`), request ids and headers in
the context, the handler's per-request status codes (`context.set_response_status`) and
content types. The handler's answers become tensors here, by the rules the runtime applied
to TorchServe's answers before (see `outputs_of`). An exception the handler raises goes to
TorchServe as always: it answers the batch's request with its error (a
`PredictionException`'s own status and message), and the runtime's batcher splits the
batch to find the row at fault. A status a handler sets for one row fails that request in
the same way, with its code and message.

Only TorchServe's worker imports this module's `handle`; torch and `ts` are never imported
by the runtime itself.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from modelpilot_runtime.backends.torchserve import wire
from modelpilot_runtime.tensors import Array, TensorSpec, v2_datatype_of

log = logging.getLogger(__name__)

# The entry point the runtime registers instead of the `.mar`'s handler.
ENTRY_POINT = f"{__name__}:handle"
# The version's `max_batch_size`, set by the runtime in TorchServe's environment: the model's
# handler sees it as `context.system_properties["batch_size"]`, as when TorchServe batched.
BATCH_SIZE_ENV = "MODELPILOT_TS_BATCH_SIZE"

Entry = Callable[[Any, Any], Any]


class AnswerError(Exception):
    """The handler's answers cannot become the declared outputs (or it set a status)."""

    def __init__(self, message: str, status: int = 500, source: str = "answer") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.source = source  # "answer": the runtime's reading of it; "handler": its status


# -- loading the model's own handler -------------------------------------------------------


def load_entry_point(handler: str) -> tuple[Entry, Callable[[Any], Any]]:
    """The handler's `handle` and `initialize`, by TorchServe 0.12's rules (its
    `TsModelLoader`): `module[:function]` from the model directory (on the worker's path) or
    a TorchServe default handler by name; a module-level function, else the module's only
    class."""
    module_name, _, function_name = handler.partition(":")
    module_name = module_name.removesuffix(".py").split("/")[-1]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = importlib.import_module(f".{module_name}", "ts.torch_handler")
    function_name = function_name or "handle"
    if hasattr(module, function_name):
        function: Entry = getattr(module, function_name)
        return function, lambda context: function(None, context)
    classes = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if member.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(
            f"handler {handler}: expected one class or a function {function_name!r}, found "
            f"{[c.__name__ for c in classes]}"
        )
    service: Any = classes[0]()
    if not hasattr(service, "handle"):
        raise ValueError(f"handler {handler}: class {classes[0].__name__} has no handle()")
    return service.handle, service.initialize


# -- rows in, answers out ------------------------------------------------------------------


def requests_of(header: dict[str, Any], tensors: dict[str, Array]) -> list[dict[str, Any]]:
    """The requests the model's handler gets for one message: a request per row (the whole
    message as one request when `split` is false), each `{"body": ...}` as TorchServe passes
    a request body: for `json` the decoded `{"inputs": [...]}` of the row (shape [1, ...]),
    for `raw` the bytes of the single BYTES input (a `bytearray`, as TorchServe gives it)."""
    split = bool(header.get("split", True))
    first = next(iter(tensors.values()))
    rows = first.shape[0] if split and first.ndim else 1
    if header.get("format") == "raw":
        (arr,) = tensors.values()
        flat = arr.reshape(rows, -1)
        return [{"body": bytearray(_as_bytes(row[0]) if row.size else b"")} for row in flat]
    columns = []
    for name, arr in tensors.items():
        datatype = v2_datatype_of(arr)
        shape = [1, *arr.shape[1:]] if split else list(arr.shape)
        flat = arr.reshape(rows, -1)
        if datatype == "BYTES":
            data = [[_as_text(v) for v in row] for row in flat]
        else:
            data = flat.tolist()
        columns.append((name, datatype, shape, data))
    return [
        {
            "body": {
                "inputs": [
                    {"name": name, "datatype": datatype, "shape": list(shape), "data": data[i]}
                    for name, datatype, shape, data in columns
                ]
            }
        }
        for i in range(rows)
    ]


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def outputs_of(value: Any, content_type: str | None, specs: list[TensorSpec]) -> dict[str, Array]:
    """One answer of the handler as the declared outputs.

    The answer is read as TorchServe and the runtime read it when each row was a request of
    its own: bytes and text are JSON when they parse as JSON, else (bytes, one BYTES output)
    that output's one element; any other value is what its JSON would have said. JSON is
    `{"outputs": [{"name", "data", "shape"?}, ...]}`, or a bare value when one output is
    declared; without a shape, the declared one with a batch dimension of 1."""
    if isinstance(value, (bytes, bytearray, str)):
        payload = value.encode() if isinstance(value, str) else bytes(value)
        try:
            value = json.loads(payload)
        except ValueError as exc:
            if len(specs) == 1 and specs[0].datatype == "BYTES":
                return {specs[0].name: np.array([payload], dtype=object)}
            if content_type and "json" in content_type:
                raise AnswerError(f"the handler's answer: {exc}") from None
            raise AnswerError(
                f"the handler answered {len(payload)} bytes of "
                f"{content_type or 'unknown type'}, not JSON"
            ) from None
    by_name = {s.name: s for s in specs}
    if isinstance(value, dict) and isinstance(value.get("outputs"), list):
        found: dict[str, Array] = {}
        for item in value["outputs"]:
            name = item.get("name") if isinstance(item, dict) else None
            if name in by_name:
                found[name] = tensor_of(by_name[name], item.get("data"), item.get("shape"))
        missing = [n for n in by_name if n not in found]
        if missing:
            raise AnswerError(
                f"the handler's answer lacks output(s) {', '.join(map(repr, missing))}"
            )
        return found
    if len(specs) == 1:
        return {specs[0].name: tensor_of(specs[0], value, None)}
    raise AnswerError(
        f"the handler answered a bare value but the config declares {len(specs)} outputs; "
        'answer {"outputs": [{"name", "data"}, ...]}'
    )


def tensor_of(spec: TensorSpec, data: Any, shape: Any) -> Array:
    """A handler's answer for one output, as the declared datatype and shape."""
    if data is None:
        raise AnswerError(f"output {spec.name!r}: the handler's answer has no data")
    try:
        if spec.datatype == "BYTES":
            flat = np.array(
                [
                    v.encode() if isinstance(v, str) else v
                    for v in np.ravel(np.array(data, dtype=object))
                ],
                dtype=object,
            )
        else:
            flat = np.asarray(data, dtype=spec.dtype).reshape(-1)
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            return flat.reshape(shape)
        # No shape in the answer: the declared one, with the batch dimension first.
        dims = list(spec.shape)
        if dims[0] == -1:
            dims[0] = 1
        if dims.count(-1) <= 1:
            return flat.reshape(dims)
        return flat.reshape(1, -1)
    except (ValueError, TypeError) as exc:
        raise AnswerError(f"output {spec.name!r}: the handler's answer: {exc}") from None


def stack(answers: list[dict[str, Array]], names: list[str]) -> dict[str, Array]:
    """The rows' outputs as one tensor each, rows in order."""
    if len(answers) == 1:
        return {n: answers[0][n] for n in names}
    try:
        return {n: np.concatenate([a[n] for a in answers]) for n in names}
    except ValueError as exc:
        raise AnswerError(
            f"the handler's answers for the rows of a batch do not stack ({exc})"
        ) from None


def stack_answers(
    values: list[Any], content_types: list[str | None], specs: list[TensorSpec], want: list[str]
) -> dict[str, Array]:
    """The answers of a batch's rows as the outputs `want`, one tensor each, rows in order.

    The common case, every answer `{"outputs": [...]}` with the same shape for an output in
    every row, converts each output of the whole batch at once; anything else goes row by
    row through `outputs_of` (which also words the errors)."""
    fast = _stack_uniform(values, specs, want)
    if fast is not None:
        return fast
    return stack(
        [outputs_of(v, ct, specs) for v, ct in zip(values, content_types, strict=True)], want
    )


def _stack_uniform(
    values: list[Any], specs: list[TensorSpec], want: list[str]
) -> dict[str, Array] | None:
    by_name = {s.name: s for s in specs}
    items: dict[str, list[Any]] = {name: [] for name in by_name}
    for value in values:
        if not isinstance(value, dict):
            return None
        outputs = value.get("outputs")
        if not isinstance(outputs, list):
            return None
        seen = 0
        for item in outputs:
            name = item.get("name") if isinstance(item, dict) else None
            if name in items:
                items[name].append(item)
                seen += 1
        if seen != len(by_name):
            return None  # a missing or repeated output: the row-by-row path says which
    result: dict[str, Array] = {}
    rows = len(values)
    for name in want:
        spec = by_name.get(name)
        if spec is None or spec.datatype == "BYTES":
            return None
        found = items[name]
        shape = found[0].get("shape")
        if not (isinstance(shape, list) and shape and all(type(d) is int for d in shape)):
            return None
        if any(item.get("shape") != shape for item in found):
            return None
        try:
            arr = np.asarray([item["data"] for item in found], dtype=spec.dtype)
        except (ValueError, TypeError, KeyError):
            return None
        total = [rows * shape[0], *shape[1:]]
        if arr.size != int(np.prod(total)):
            return None
        result[name] = arr.reshape(total)
    return result


def message_text(value: Any) -> str:
    """What a handler answered with an error status, as a message."""
    if isinstance(value, dict) and "message" in value:
        return str(value["message"])
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")[:500]
    if isinstance(value, str):
        return value[:500]
    try:
        return json.dumps(value)[:500]
    except (TypeError, ValueError):
        return repr(value)[:500]


def quiet_per_request_lines() -> None:
    """Drop the two lines TorchServe's worker prints for every request: "Backend received
    inference at: <time>" and the `[METRICS]` line of its PredictionTime gauge. The frontend
    reads each from the worker's stdout and logs or parses it; nothing reads either here
    (the runtime measures its own metrics and serves no TorchServe metric). Warnings,
    errors, tracebacks and the handler's own log lines still reach the model log."""
    logging.getLogger().addFilter(_not_received_line)
    logging.getLogger("ts.metrics.caching_metric").addFilter(_not_prediction_time)


def _not_received_line(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not str(record.msg).startswith(
        "Backend received inference"
    )


def _not_prediction_time(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not str(record.msg).startswith(
        "[METRICS]PredictionTime"
    )


# -- the entry point -----------------------------------------------------------------------


class BatchHandler:
    """Wraps the model's handler; one per worker."""

    def __init__(self, context: Any) -> None:
        manifest = context.manifest or {}
        handler = str(manifest.get("model", {}).get("handler", ""))
        if not handler:
            raise ValueError("the .mar's MANIFEST.json names no handler")
        self.entry, initialize = load_entry_point(handler)
        batch = os.environ.get(BATCH_SIZE_ENV)
        if batch:
            context.system_properties["batch_size"] = int(batch)
        initialize(context)
        quiet_per_request_lines()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        # Usually one TorchServe request; more only if TorchServe grouped several.
        # TorchServe's own RequestProcessor class, taken from the context (importing `ts`
        # here would leave its version file open).
        request_processor = type(context.request_processor[0])
        answers: list[bytes | None] = [None] * len(data)
        parts: list[tuple[int, dict[str, Any], int, int]] = []  # request, header, row span
        requests: list[dict[str, Any]] = []
        for index, request in enumerate(data):
            body = request.get("body")
            if body is None:
                body = request.get("data")
            try:
                if not isinstance(body, (bytes, bytearray)):
                    raise wire.WireError(f"a body of {type(body).__name__}, not bytes")
                header, tensors = wire.decode(body)
                rows = requests_of(header, tensors)
            except (wire.WireError, ValueError) as exc:
                answers[index] = _error(AnswerError(f"the runtime's request: {exc}"))
                continue
            parts.append((index, header, len(requests), len(requests) + len(rows)))
            requests.extend(rows)
        if requests:
            self._run(requests, parts, answers, context, request_processor)
        for index in range(len(data)):
            context.set_response_content_type(index, wire.CONTENT_TYPE)
        return [a if a is not None else b"" for a in answers]

    def _run(
        self,
        requests: list[dict[str, Any]],
        parts: list[tuple[int, dict[str, Any], int, int]],
        answers: list[bytes | None],
        context: Any,
        request_processor: Any,
    ) -> None:
        outer_ids, outer_processors = context.request_ids, context.request_processor
        processors = []
        ids = {}
        for index, header, start, end in parts:
            raw = header.get("format") == "raw"
            content_type = "application/octet-stream" if raw else "application/json"
            outer_id = (outer_ids or {}).get(index, str(index))
            for row in range(start, end):
                processors.append(
                    request_processor(
                        {"body": {"content-type": content_type}, "Content-Type": content_type}
                    )
                )
                ids[row] = f"{outer_id}-{row - start}"
        context.request_ids, context.request_processor = ids, processors
        try:
            results = self.entry(requests, context)
        finally:
            context.request_ids, context.request_processor = outer_ids, outer_processors
        for index, header, start, end in parts:
            try:
                answers[index] = self._answer(
                    results, len(requests), processors, header, start, end
                )
            except AnswerError as exc:
                answers[index] = _error(exc)
            except Exception as exc:  # a bug here must not look like the handler's
                log.exception("reading the handler's answers failed")
                answers[index] = _error(AnswerError(f"reading the handler's answers: {exc!r}"))

    @staticmethod
    def _answer(
        results: Any,
        count: int,
        processors: list[Any],
        header: dict[str, Any],
        start: int,
        end: int,
    ) -> bytes:
        if not isinstance(results, list):
            raise AnswerError(
                f"the handler answered {type(results).__name__}, not a list (one answer per "
                "request)"
            )
        if len(results) != count:
            raise AnswerError(f"the handler gave {len(results)} answers for {count} requests")
        specs = [TensorSpec(o["name"], o["datatype"], tuple(o["shape"])) for o in header["outputs"]]
        content_types = []
        for row in range(start, end):
            status = processors[row].get_response_status_code()
            if status is not None and status != 200:
                raise AnswerError(message_text(results[row]), int(status), "handler")
            content_types.append(processors[row].get_response_headers().get("content-type"))
        want = header.get("want") or [s.name for s in specs]
        outputs = stack_answers(results[start:end], content_types, specs, want)
        datatypes = {s.name: s.datatype for s in specs}
        return wire.encode(outputs, datatypes)


def _error(exc: AnswerError) -> bytes:
    return wire.encode(
        {}, {}, error={"status": exc.status, "message": exc.message, "source": exc.source}
    )


_handler: BatchHandler | None = None


def handle(data: Any, context: Any) -> Any:
    """TorchServe's entry point: called once with no data to initialize, then per batch."""
    global _handler
    if data is None:
        _handler = BatchHandler(context)
        return None
    assert _handler is not None, "TorchServe called handle() before initializing it"
    return _handler.handle(data, context)
