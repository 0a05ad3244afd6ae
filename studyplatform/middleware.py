import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.shortcuts import render

logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    """A database that is down for a moment shows a friendly retry page (503) instead of a server error.

    Every state change runs in a transaction, so a request that failed here stored nothing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable path=%s error=%s", request.path, exception)
        response = render(request, "unavailable.html", status=503)
        response["Retry-After"] = "5"
        return response


class ContentSecurityPolicyMiddleware:
    """A Content-Security-Policy header on every response (pages, the JSON APIs, images, static files).

    settings.CONTENT_SECURITY_POLICY is strict: scripts and styles only from this site's files, no inline script or
    style, nothing from other origins. Paths under a prefix of settings.CONTENT_SECURITY_POLICY_RELAXED (the Django
    admin, whose widgets and this project's admin columns set inline styles) get the policy named there instead.
    A response that already carries the header keeps its own."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY
        self.relaxed = tuple(settings.CONTENT_SECURITY_POLICY_RELAXED.items())

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy_for(request.path)
        return response

    def policy_for(self, path):
        for prefix, policy in self.relaxed:
            if path.startswith(prefix):
                return policy
        return self.policy
