import logging

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
