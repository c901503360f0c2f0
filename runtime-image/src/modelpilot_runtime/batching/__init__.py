"""Scheduling requests onto a backend: run each at once (`DirectScheduler`) or gather them into
batches (`DynamicBatcher`); both bound their queues and reject instead of growing."""

from modelpilot_runtime.batching.scheduler import DirectScheduler, DynamicBatcher, Runner, Scheduler

__all__ = ["DirectScheduler", "DynamicBatcher", "Runner", "Scheduler"]
