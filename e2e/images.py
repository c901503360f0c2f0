"""Which container images the node agent can run, and as what local command.

There is no container runtime here: an image is only a name for a program installed on
this machine. An image the table does not know makes its pod fail to start with a
reason that says so; it never runs something else in its place.

Matching ignores the registry and the tag: ``ghcr.io/acme/modelpilot/runtime:1.2`` and
``modelpilot/runtime`` are the same image.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Programs a container's `command` may name, as if they were inside every image.
SHARED_PROGRAMS = ("sh", "bash", "cat", "cp", "echo", "false", "ls", "mkdir", "sleep", "true")


@dataclass(frozen=True)
class Image:
    """A mapped image: its entrypoint, the programs it carries by name, and environment
    defaults (``$(POD_IP)`` is the pod's address) that the pod's own env overrides."""

    repository: str
    entrypoint: tuple[str, ...]
    programs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def _python_programs() -> dict[str, str]:
    return {"python": sys.executable, "python3": sys.executable}


def _console_script(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def known_images() -> dict[str, Image]:
    images: dict[str, Image] = {
        "modelpilot/testserver": Image(
            "modelpilot/testserver",
            (sys.executable, str(HERE / "testserver.py")),
            _python_programs(),
        ),
    }
    runtime = _console_script("modelpilot-runtime")
    if runtime is not None:
        images["modelpilot/runtime"] = Image(
            "modelpilot/runtime",
            (runtime,),
            {**_python_programs(), "modelpilot-runtime": runtime},
        )
    operator = _console_script("modelpilot")
    if operator is not None:
        # The chart's operator image: its entrypoint is the `modelpilot` command.
        images["modelpilot/operator"] = Image(
            "modelpilot/operator",
            (operator,),
            {**_python_programs(), "modelpilot": operator},
        )
    return images


def repository(image: str) -> str:
    """``registry/path/name:tag@digest`` -> ``path/name`` without registry, tag, digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    parts = name.split("/")
    # A first part with a dot or a port, or `localhost`, is a registry host.
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def lookup(image: str) -> Image | None:
    repo = repository(image)
    for key, mapped in known_images().items():
        if repo == key or repo.endswith("/" + key):
            return mapped
    return None


def resolve_program(image: Image, name: str) -> str | None:
    """A container's ``command[0]`` as a local executable, if the image has it."""
    base = os.path.basename(name)
    if base in image.programs:
        return image.programs[base]
    if base in SHARED_PROGRAMS:
        return shutil.which(base)
    return None
