"""The operator as a child process of a test or benchmark: ``modelpilot operator run``
watching one namespace, with its settings as ``MODELPILOT_*`` variables; killable with
SIGKILL (as when its node dies) and restartable, its output appended to one log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

RUNTIME_IMAGE = "ghcr.io/modelpilot/runtime:test"


class OperatorProcess:
    """``modelpilot operator run -n NAMESPACE`` against the local cluster's kubeconfig."""

    def __init__(
        self,
        namespace: str,
        kubeconfig: Path,
        log: Path,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.log = log
        # Tests want quick resyncs, no metrics port to collide on, and a known image name.
        self.settings = {
            "MODELPILOT_RESYNC_PERIOD": "3s",
            "MODELPILOT_METRICS_PORT": "0",
            "MODELPILOT_RUNTIME_IMAGE": RUNTIME_IMAGE,
            "MODELPILOT_LOG_FORMAT": "plain",
            # One identity across restarts, like a container restarted in its pod: a
            # restarted operator takes its own Lease back at once.
            "MODELPILOT_LEADER_ID": f"operator-{namespace}",
            **(settings or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive(), "the operator is already running"
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.settings}
        cmd = [sys.executable, "-m", "modelpilot_operator.cli.main", "operator", "run"]
        cmd += ["-n", self.namespace]
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(cmd)}\n".encode())
            out.flush()
            # The child keeps its own copy of the descriptor.
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
