"""Errors of holds and usage, each naming its reason as the contract says. (Refusals for
the tier, slots and request rate are ratelimits/errors.py's.)"""

from config.api import ApplicationError


class HoldNotFound(ApplicationError):
    status = 404
    code = "hold_not_found"
    message = "No hold with this id."


class HoldClosed(ApplicationError):
    status = 409
    code = "hold_closed"
    message = "The hold is settled, released or expired."


class UsageMismatch(ApplicationError):
    code = "invalid_request"
    message = "The usage does not fit the hold's model."
