"""JSON request bodies for the APIs, with a bound on nesting.

Python's decoder gives up on deeply nested input with a RecursionError, which DRF's parser lets through as a server
error. Here that is a parse error (400), and so is any body nested more deeply than `MAX_DEPTH` (no request of the
platform needs more than a few levels), so later code never walks a pathological structure.
"""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32


def nesting_depth(value):
    """How deeply lists and objects nest in a decoded JSON value (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body is nested too deeply") from exc
        if nesting_depth(data) > MAX_DEPTH:
            raise ParseError(f"JSON parse error - the body is nested more than {MAX_DEPTH} levels deep")
        return data
