"""Routing contracts: endpoint probes and circuit-breaker transitions (router service)."""

from __future__ import annotations

from libs.contracts.events import Event

# The events this module defines; `codec` joins them with the others.
EVENT_CLASSES: tuple[type[Event], ...] = ()
