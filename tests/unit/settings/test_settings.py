"""Operator settings from MODELPILOT_* variables and `modelpilot operator run` flags; RBAC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelpilot_operator import rbac
from modelpilot_operator.cli.main import build_parser
from modelpilot_operator.cli.operator import settings_from
from modelpilot_operator.settings import DEFAULT_RUNTIME_IMAGE, Settings

ROOT = Path(__file__).resolve().parents[3]


def test_defaults() -> None:
    s = Settings.load({})
    assert s.all_namespaces
    assert s.runtime_image == DEFAULT_RUNTIME_IMAGE
    assert DEFAULT_RUNTIME_IMAGE.startswith("ghcr.io/modelpilot/runtime:")
    assert (s.resync_period, s.log_level, s.log_format) == (300.0, "info", "plain")
    assert (s.leader_election, s.leader_election_name, s.lease_duration, s.workers) == (
        True,
        "modelpilot-operator",
        15.0,
        4,
    )


def test_environment() -> None:
    s = Settings.load(
        {
            "MODELPILOT_NAMESPACES": "ml, staging,",
            "MODELPILOT_LOG_LEVEL": "DEBUG",
            "MODELPILOT_LOG_FORMAT": "json",
            "MODELPILOT_RESYNC_PERIOD": "1m30s",
            "MODELPILOT_RUNTIME_IMAGE": "registry.local/runtime:dev",
            "MODELPILOT_LEADER_ELECTION": "false",
            "MODELPILOT_PROMETHEUS_URL": "http://prom:9090",
            "MODELPILOT_PROMETHEUS_TIMEOUT": "5s",
            "MODELPILOT_SERVICE_MONITOR": "false",
        }
    )
    assert s.namespaces == ("ml", "staging")
    assert (s.log_level, s.log_format, s.resync_period) == ("debug", "json", 90.0)
    assert (s.runtime_image, s.leader_election, s.prometheus_url) == (
        "registry.local/runtime:dev",
        False,
        "http://prom:9090",
    )
    assert s.prometheus_timeout == 5.0
    assert s.service_monitor is False
    assert s.prometheus().url == "http://prom:9090"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RESYNC_PERIOD", "soon"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("METRICS_PORT", "http"),
        ("SERVICE_MONITOR", "maybe"),
    ],
)
def test_a_wrong_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"MODELPILOT_{name}"):
        Settings.load({f"MODELPILOT_{name}": value})


def test_flags_override_the_environment() -> None:
    args = build_parser().parse_args(
        ["operator", "run", "-n", "a", "-n", "b", "--resync-period", "30s", "--log-format", "json"]
    )
    s = settings_from(args, {"MODELPILOT_NAMESPACES": "x", "MODELPILOT_LOG_LEVEL": "warning"})
    assert s.namespaces == ("a", "b")
    assert (s.resync_period, s.log_format, s.log_level) == (30.0, "json", "warning")


def test_rbac_files_are_current() -> None:
    for rel, text in rbac.rendered().items():
        assert (ROOT / rel).read_text() == text, f"{rel}: run make rbac"


def test_rbac_never_grants_secrets_or_wildcards() -> None:
    role = yaml.safe_load(rbac.rendered()[rbac.ROLE_PATH].split("\n", 1)[1])
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
        assert "*" not in rule["resources"] + rule["verbs"] + rule["apiGroups"]


def test_rbac_covers_every_child_kind() -> None:
    from modelpilot_operator.k8s.kinds import CHILD_KINDS

    granted = {
        (group, res)
        for rule in rbac.RULES
        if "patch" in rule["verbs"] and "create" in rule["verbs"] and "delete" in rule["verbs"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
    }
    for kind in CHILD_KINDS:
        assert (kind.group, kind.plural) in granted, kind


def test_rbac_check_mode_fails_on_drift(tmp_path: Path) -> None:
    assert rbac.main(["--out", str(tmp_path)]) == 0
    assert rbac.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / rbac.ROLE_PATH).write_text("rules: []\n")
    assert rbac.main(["--check", "--out", str(tmp_path)]) == 1
