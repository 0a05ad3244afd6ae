"""Fixed-window counters in Django's cache: how many sessions a client and a study may start, and how many wrong
resume codes a session accepts, per window (settings.SESSION_START_LIMITS).

The counters live in the cache named by CACHE_URL; with the default in-process cache each web process counts on its
own, so a deployment with several processes points CACHE_URL at Redis.
"""

import time

from django.conf import settings
from django.core.cache import cache


def limits():
    return settings.SESSION_START_LIMITS


def client_address(request):
    """The address the limits count a request against: CLIENT_ADDRESS_HEADER's value behind a proxy (its last
    entry, the one the proxy added), else the connection's address."""
    header = settings.CLIENT_ADDRESS_HEADER
    value = ""
    if header:
        meta_key = "HTTP_" + header.upper().replace("-", "_")
        value = request.META.get(meta_key, "").split(",")[-1].strip()
    return (value or request.META.get("REMOTE_ADDR", "") or "unknown")[:64]


def _key(name):
    window = limits()["window_seconds"]
    return f"ratelimit:{name}:{int(time.time() // window)}", window


def count(name):
    """How many times `name` was hit in the current window."""
    key, _ = _key(name)
    return cache.get(key, 0)


def hit(name):
    """Count one more hit of `name` in the current window and return the new count."""
    key, window = _key(name)
    cache.add(key, 0, timeout=window + 1)
    try:
        return cache.incr(key)
    except ValueError:  # the entry expired between add and incr
        cache.set(key, 1, timeout=window + 1)
        return 1


def take_session_start(study, client):
    """Reserve one session start for `client` (an address, or None for callers inside the server) in `study`;
    returns the name of the limit that refused it, or None when the start may go ahead. A client over its limit
    does not use up the study's allowance."""
    if client is not None and hit(f"start:client:{client}") > limits()["per_client"]:
        return "per_client"
    if hit(f"start:study:{study.pk}") > limits()["per_study"]:
        return "per_study"
    return None


def resume_attempts_left(participant):
    return limits()["resume_code_attempts"] - count(f"resume:{participant.pk}")


def wrong_resume_code(participant):
    hit(f"resume:{participant.pk}")
