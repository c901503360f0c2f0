"""The ceiling: onnxruntime in-process (one intra-op and one inter-op thread), rows per second
and per-call latency at the given batch sizes. Run pinned to the server's core.

    taskset -c 1 python ceiling.py MODEL_PATH SHAPE_JSON BATCH [BATCH ...]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def measure(
    session: ort.InferenceSession, shape: list[int], batch: int, seconds: float = 2.0
) -> dict[str, float]:
    x = np.random.default_rng(0).random([batch, *shape], dtype=np.float32)
    feeds = {session.get_inputs()[0].name: x}
    for _ in range(20):
        session.run(None, feeds)
    times: list[float] = []
    cpu_start = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu_start
    arr = np.array(times)
    return {
        "batch": batch,
        "calls": len(times),
        "rows_per_s": batch * len(times) / arr.sum(),
        # Per CPU-second of this process: what other processes on the core do not change.
        "rows_per_cpu_s": batch * len(times) / cpu,
        "p50_us": float(np.percentile(arr, 50) * 1e6),
    }


def main() -> None:
    path, shape = sys.argv[1], json.loads(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    print(json.dumps([measure(session, shape, int(b)) for b in sys.argv[3:]]))


if __name__ == "__main__":
    main()
