"""The run path's refusals for the account's tier, its slots and its request rate; each
names its reason, as the contract says."""

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
