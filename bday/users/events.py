"""The seed's event-driven path (Step 6): `user:birthday` / `user:anniversary` -> queue.

A tiny in-process emitter. `emit("user:birthday", user_id)` runs the registered listeners; the
defaults call the matching hook, which plans the row, commits and publishes. A listener's
error is logged, never raised into the emitter (an event must not break its sender).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from bday.users import hooks

log = logging.getLogger(__name__)

USER_BIRTHDAY = "user:birthday"
USER_ANNIVERSARY = "user:anniversary"

Listener = Callable[..., object]
_listeners: dict[str, list[Listener]] = defaultdict(list)


def on(event: str, listener: Listener) -> Listener:
    """Register `listener` for `event`; returns it (usable as a decorator factory target)."""
    _listeners[event].append(listener)
    return listener


def off(event: str, listener: Listener) -> None:
    _listeners[event].remove(listener)


def emit(event: str, *args, **kwargs) -> list[object]:
    """Run every listener of `event`; returns their results (None for one that failed)."""
    results = []
    for listener in list(_listeners[event]):
        try:
            results.append(listener(*args, **kwargs))
        except Exception:
            log.exception("listener %r for %s failed", listener, event)
            results.append(None)
    return results


on(USER_BIRTHDAY, hooks.on_birthday_hook)
on(USER_ANNIVERSARY, hooks.on_anniversary_hook)
