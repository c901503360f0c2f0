"""Thin kopf handlers: read, call the pure code, apply, patch status. Nothing imports them."""
