"""The `modelpilot` command (also `kubectl modelpilot`)."""
