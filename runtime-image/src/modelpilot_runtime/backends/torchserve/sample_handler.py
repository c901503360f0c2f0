"""The TorchServe handler of the sample `.mar` (see `sample`): it runs inside TorchServe's
Python worker, never in the runtime.

It speaks the runtime's `json` request format: each request's body is
`{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [...]}]}` and each
answer `{"outputs": [{"name", "datatype", "shape", "data"}, ...]}`. Besides the class
probabilities it answers `handler_batch`, the number of requests the handler got together
(the rows of a runtime batch), so tests can see the batching. A first input value of 2**100
makes it refuse the whole call (422), -2**100 makes it raise, 2**101 makes it sleep for the
second value's seconds, 2**102 makes it refuse that request alone with status 409 through
`context.set_response_status` (powers of two: exact in FP32).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

REFUSE, RAISE, SLEEP, CONFLICT = 2.0**100, -(2.0**100), 2.0**101, 2.0**102


def build_model() -> Any:
    """The sample's network: the runtime's `tiny` sample, 8 -> 16 -> 3 with a softmax."""
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)
    )


class TinyHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        torch.set_num_threads(1)
        model = build_model()
        state = torch.load(os.path.join(model_dir, "model.pt"), weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval()
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        rows = []
        for request in data:
            body: Any = request.get("body") or request.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            tensor = body["inputs"][0]
            rows.append(torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"]))
        for row in rows:
            first = float(row.reshape(-1)[0])
            if first == REFUSE:
                # Imported here: `sample` imports this module for `build_model`, and importing
                # `ts` opens (and never closes) its version file.
                from ts.utils.util import PredictionException

                raise PredictionException("input values must stay below 2**100", 422)
            if first == RAISE:
                raise RuntimeError("the sample handler was asked to fail")
            if first == SLEEP:
                time.sleep(float(row.reshape(-1)[1]))
        with torch.inference_mode():
            probabilities = self.model(torch.cat(rows))
        answers: list[dict[str, Any]] = []
        offset = 0
        for index, row in enumerate(rows):
            part = probabilities[offset : offset + row.shape[0]]
            offset += row.shape[0]
            if float(row.reshape(-1)[0]) == CONFLICT:
                context.set_response_status(409, "Conflict", idx=index)
                answers.append({"message": "this request alone is refused (409)"})
                continue
            answers.append(
                {
                    "outputs": [
                        {
                            "name": "probabilities",
                            "datatype": "FP32",
                            "shape": list(part.shape),
                            "data": part.reshape(-1).tolist(),
                        },
                        {
                            "name": "handler_batch",
                            "datatype": "INT64",
                            "shape": [row.shape[0], 1],
                            "data": [len(data)] * row.shape[0],
                        },
                    ]
                }
            )
        return answers
