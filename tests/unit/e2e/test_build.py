"""The build's pure parts: wrapper go.mod files, cached parts and their pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e import build, versions
from e2e.build import BuildError, CachePaths, directives, tools_go, wrapper_gomod

UPSTREAM = """module github.com/example/app/v3

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/example/ext v0.0.0-00010101000000-000000000000
\tgithub.com/gorilla/mux v1.8.1 // indirect
)

// Dynamic config extension.
replace github.com/example/ext => ./pkg/ext // nested module

replace (
\tgithub.com/gorilla/mux => github.com/fork/mux v0.0.0-20250523120546-41b6ec3aed59
\tgithub.com/old/dep   v1.0.0 => github.com/new/dep v1.2.0
)

exclude github.com/bad/sdk v3.0.83+incompatible
"""


def test_directives_read_one_line_and_block_forms() -> None:
    assert directives(UPSTREAM, "replace") == [
        "github.com/example/ext => ./pkg/ext",
        "github.com/gorilla/mux => github.com/fork/mux v0.0.0-20250523120546-41b6ec3aed59",
        "github.com/old/dep v1.0.0 => github.com/new/dep v1.2.0",
    ]
    assert directives(UPSTREAM, "exclude") == ["github.com/bad/sdk v3.0.83+incompatible"]
    assert directives(UPSTREAM, "retract") == []


def test_wrapper_repeats_upstream_directives_and_substitutes_local_replaces() -> None:
    text = wrapper_gomod(
        "app", UPSTREAM, "github.com/example/app/v3", "v3.7.13", {"github.com/example/ext": "./ext"}
    )
    assert text.startswith("module modelpilot.local/app-build\n\ngo 1.26.0\n\n")
    assert "godebug default=go1.26\n" in text
    assert "require github.com/example/app/v3 v3.7.13\n" in text
    assert "\tgithub.com/example/ext => ./ext\n" in text
    assert "./pkg/ext" not in text
    assert "\tgithub.com/gorilla/mux => github.com/fork/mux v0.0.0-" in text
    assert "\tgithub.com/old/dep v1.0.0 => github.com/new/dep v1.2.0\n" in text
    assert "exclude (\n\tgithub.com/bad/sdk v3.0.83+incompatible\n)\n" in text


def test_wrapper_refuses_a_local_replace_it_has_no_substitute_for() -> None:
    with pytest.raises(BuildError, match=r"github\.com/example/ext"):
        wrapper_gomod("app", UPSTREAM, "github.com/example/app/v3", "v3.7.13")


def test_wrapper_without_directives_is_plain() -> None:
    upstream = "module sigs.k8s.io/metrics-server\n\ngo 1.24.4\n\nrequire k8s.io/api v0.33.0\n"
    text = wrapper_gomod("metrics-server", upstream, "sigs.k8s.io/metrics-server", "v0.8.0")
    assert text == (
        "module modelpilot.local/metrics-server-build\n\ngo 1.24.4\n\n"
        "require sigs.k8s.io/metrics-server v0.8.0\n"
    )


def test_kubernetes_staging_modules_become_their_releases() -> None:
    upstream = (
        "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n"
        "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n"
    )
    local = {m: f"{m} v0.36.3" for m in build.staging_modules(upstream)}
    text = wrapper_gomod("kube-proxy", upstream, "k8s.io/kubernetes", "v1.36.3", local)
    assert (
        "\tk8s.io/api => k8s.io/api v0.36.3\n\tk8s.io/client-go => k8s.io/client-go v0.36.3\n"
        in (text)
    )


def test_tools_file_imports_each_command_under_a_build_tag() -> None:
    text = tools_go(["a.example/cmd/one", "a.example/cmd/two"])
    assert text.startswith("//go:build tools\n")
    assert '\t_ "a.example/cmd/one"\n\t_ "a.example/cmd/two"\n' in text


def test_every_part_has_a_pin_and_outputs(tmp_path: Path) -> None:
    paths = CachePaths(tmp_path)
    outputs = build.part_outputs(paths)
    assert set(outputs) == set(build.wanted_pins())
    assert {"cni", "kube-proxy", "traefik", "metrics-server"} <= set(outputs)
    assert build.wanted_pins()["kube-proxy"] == versions.KUBERNETES
    assert build.wanted_pins()["traefik"] == versions.TRAEFIK
    assert paths.cni == paths.bin / "cni"
    assert outputs["cni"] == [
        paths.cni / p for p in ("bridge", "host-local", "loopback", "portmap")
    ]
    binaries = {p.name for out in outputs.values() for p in out if p.parent == paths.bin}
    assert binaries == set(build.BINARIES)


def _touch_all(paths: CachePaths) -> None:
    for outs in build.part_outputs(paths).values():
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()


def test_a_new_part_is_built_alone_on_a_cache_that_lacks_it(tmp_path: Path) -> None:
    paths = CachePaths(tmp_path)
    _touch_all(paths)
    for part in build.wanted_pins():
        if part != "kube-proxy":
            build.record_part(paths, part, 1.0)
    assert not build.is_complete(paths)
    outputs = build.part_outputs(paths)
    missing = [p for p, out in outputs.items() if not build.part_is_cached(paths, p, out)]
    assert missing == ["kube-proxy"]
    build.record_part(paths, "kube-proxy", 2.5)
    assert build.is_complete(paths)
    assert build.read_manifest(paths)["parts"]["kube-proxy"] == {
        "pin": versions.KUBERNETES,
        "seconds": 2.5,
    }


def test_a_changed_pin_or_a_missing_plugin_rebuilds_the_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = CachePaths(tmp_path)
    _touch_all(paths)
    for part in build.wanted_pins():
        build.record_part(paths, part, 1.0)
    assert build.is_complete(paths)
    (paths.cni / "portmap").unlink()
    assert not build.part_is_cached(paths, "cni", build.part_outputs(paths)["cni"])
    monkeypatch.setattr(versions, "TRAEFIK", "v3.7.99")
    assert not build.part_is_cached(paths, "traefik", build.part_outputs(paths)["traefik"])
    assert build.part_is_cached(paths, "kubernetes", build.part_outputs(paths)["kubernetes"])


def test_traefik_stand_in_declares_the_replaced_module() -> None:
    gomod = build.TRAEFIK_EXT_FILES["ext/go.mod"]
    assert gomod.startswith(f"module {build.TRAEFIK_EXT}\n")
    assert "type HTTP struct{}" in build.TRAEFIK_EXT_FILES["ext/ext.go"]
    assert "type Router struct{}" in build.TRAEFIK_EXT_FILES["ext/ext.go"]


def test_a_substitute_overrides_an_upstream_replace() -> None:
    text = wrapper_gomod(
        "app",
        UPSTREAM,
        "github.com/example/app/v3",
        "v3.7.13",
        {"github.com/example/ext": "./ext", "github.com/gorilla/mux": "./mux"},
    )
    assert "\tgithub.com/gorilla/mux => ./mux\n" in text
    assert "github.com/fork/mux" not in text


def test_module_copies_leave_out_tests_and_emptied_folders(tmp_path: Path) -> None:
    upstream = tmp_path / "mod"
    (upstream / "providers" / "dns" / "vendor1").mkdir(parents=True)
    (upstream / "providers" / "dns" / "table.go").write_text("package dns\n")
    (upstream / "providers" / "dns" / "vendor1" / "p.go").write_text("package vendor1\n")
    (upstream / "challenge" / "testdata").mkdir(parents=True)
    (upstream / "challenge" / "c.go").write_text("package challenge\n")
    (upstream / "challenge" / "c_test.go").write_text("package challenge\n")
    build.copy_module(upstream, tmp_path / "copy", ["providers/dns"])
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*"))
    assert copied == ["challenge", "challenge/c.go", "providers", "providers/dns"]
