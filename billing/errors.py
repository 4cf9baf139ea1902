"""Payment errors the customer API renders, and Stripe's failures mapped to them."""


from uuid import UUID

from accounts.models import Account
from billing.stripe_gateway import (
    StripeGatewayError,
    StripeNotConfigured,
    StripeUnavailable,
)
from config.api import ApplicationError

# --- Errors the customer API renders ----------------------------------------------------


class PaymentFailed(ApplicationError):
    status = 402
    code = "payment_failed"
    message = "The payment failed."


class CardNotFound(ApplicationError):
    status = 404
    code = "card_not_found"
    message = "No saved card with this id on this account."


class PaymentNotFound(ApplicationError):
    status = 404
    code = "payment_not_found"
    message = "No payment with this id on this account."


class CardNotSaved(ApplicationError):
    status = 400
    code = "card_not_saved"
    message = "The card was not set up."


class NoCard(ApplicationError):
    status = 400
    code = "no_card"
    message = "Save a card first."


class PaymentProviderUnavailable(ApplicationError):
    status = 503
    code = "payment_provider_unavailable"
    message = ("The payment provider cannot be reached. Try again in a moment; a payment "
               "that went through is credited as soon as the provider reports it.")


class PaymentsNotConfigured(ApplicationError):
    status = 503
    code = "payments_not_configured"
    message = ("Payments are not configured on this service, so cards cannot be saved or "
               "charged. The operator must set STRIPE_SECRET_KEY (see README.md).")


class PaymentProviderError(ApplicationError):
    status = 502
    code = "payment_provider_error"
    message = "The payment provider refused the request."


class AccountSuspended(ApplicationError):
    status = 403
    code = "account_suspended"
    message = "The account is suspended; payments are not taken until staff reinstate it."



def account_active_ensure(*, account_id: UUID) -> None:
    """Suspended accounts (a dispute, a fraud review) take no new payments."""
    status = Account.objects.values_list("status", flat=True).get(id=account_id)
    if status != Account.Status.ACTIVE:
        raise AccountSuspended()


def provider_error(exc: StripeGatewayError) -> ApplicationError:
    if isinstance(exc, StripeNotConfigured):
        # Not a passing outage: retrying will not help until the operator configures it.
        return PaymentsNotConfigured()
    if isinstance(exc, StripeUnavailable):
        return PaymentProviderUnavailable()
    return PaymentProviderError(str(exc) or None)


class InvalidExpiry(ApplicationError):
    code = "invalid_request"
    message = "The expiry must be in the future."


class InsufficientCredit(ApplicationError):
    status = 402
    code = "insufficient_credits"
    message = "Insufficient credits. Please add credits to continue."
