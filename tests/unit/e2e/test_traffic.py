"""The mesh stand-in routes requests the way the route it read back says."""

from __future__ import annotations

from collections import Counter

from e2e.traffic import MeshDriver, _match_headers
from modelpilot_operator.api.v1alpha1 import TrafficMatch
from modelpilot_operator.builders import Traffic


class _NoApi:
    """The picking logic needs no API server."""


def _driver(traffic: Traffic) -> MeshDriver:
    d = MeshDriver(_NoApi(), "ns", "fraud", seed=7)  # type: ignore[arg-type]
    d._traffic = traffic
    return d


def test_weights_split_requests() -> None:
    d = _driver(Traffic(weights={"v1": 75, "v2": 25}))
    picks = Counter(d._pick(Traffic(weights={"v1": 75, "v2": 25}))[0] for _ in range(4000))
    assert 0.70 < picks["v1"] / 4000 < 0.80
    assert picks["v1"] + picks["v2"] == 4000


def test_zero_weight_gets_nothing() -> None:
    t = Traffic(weights={"v1": 100, "v2": 0})
    d = _driver(t)
    assert {d._pick(t)[0] for _ in range(500)} == {"v1"}


def test_matching_users_go_to_the_match_version() -> None:
    m = TrafficMatch(header="x-group", exact="beta")
    t = Traffic(weights={"v1": 100}, match_version="v2", match=(m,))
    d = _driver(t)
    picks = [d._pick(t) for _ in range(1000)]
    assert all(v == "v2" for v, matched in picks if matched)
    assert all(v == "v1" for v, matched in picks if not matched)
    assert 200 < sum(matched for _, matched in picks) < 400
    assert _match_headers(t) == {"x-group": "beta"}


def test_cookie_match_header() -> None:
    m = TrafficMatch(cookie="canary", regex="^yes$")
    t = Traffic(weights={"v1": 100}, match_version="v2", match=(m,))
    assert _match_headers(t) == {"cookie": "canary=yes"}
