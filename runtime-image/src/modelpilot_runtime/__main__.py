"""`python -m modelpilot_runtime` is the `modelpilot-runtime` command."""

from modelpilot_runtime.cli import main

raise SystemExit(main())
