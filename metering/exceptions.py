"""Refusals of the run path, each naming its reason as the contract says."""

from config.api import ApplicationError


class AccountSuspended(ApplicationError):
    status = 403
    code = "account_suspended"
    message = "The account is suspended."


class ModelSizeLocked(ApplicationError):
    status = 403
    code = "model_size_locked"
    message = "The account's tier does not unlock this model size."


class ConcurrencyLimit(ApplicationError):
    status = 429
    code = "concurrency_limit"
    message = "All of the tier's concurrent-run slots are taken."


class RateLimited(ApplicationError):
    status = 429
    code = "rate_limited"
    message = "Too many closed-model requests per second for the account's plan."


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
