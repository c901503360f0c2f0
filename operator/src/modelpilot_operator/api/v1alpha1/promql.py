"""Custom check queries: jinja2 templates (sandboxed) that must render to valid PromQL."""

from __future__ import annotations

from collections.abc import Mapping

import promql_parser
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_VARIABLES = ("namespace", "name", "version", "stable", "candidate", "interval")

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

# Values used only to prove a template renders and parses; they look like real ones.
_SAMPLE = {
    "namespace": "ml",
    "name": "fraud",
    "version": "v2",
    "stable": "v1",
    "candidate": "v2",
    "interval": "1m",
}


def render_query(template: str, variables: Mapping[str, str]) -> str:
    """Render a query template with the given variables (unknown variables are an error)."""
    return _ENV.from_string(template).render(**variables)


def validate_query_template(template: str) -> None:
    """Raise ValueError with a readable message unless the template renders to valid PromQL."""
    try:
        rendered = render_query(template, _SAMPLE)
    except TemplateError as exc:
        raise ValueError(
            f"query template does not render: {exc}; variables are {', '.join(TEMPLATE_VARIABLES)}"
        ) from exc
    try:
        promql_parser.parse(rendered)
    except Exception as exc:  # the parser raises plain ValueError/RuntimeError subclasses
        raise ValueError(f"query is not valid PromQL: {exc}") from exc
