from django.db import transaction

from accounts.models import Account, User
from billing.account_opening import account_create
from notifications.services import account_welcome_email_enqueue


@transaction.atomic
def customer_sign_up(*, user: User) -> Account:
    """Save a user who signed up on the dashboard and open their billing account with its
    free grant at once (the same service the provisioning API uses; it reuses the user)."""
    user.email = user.email.strip().lower()
    user.save()
    account, created = account_create(email=user.email)
    if created:
        account_welcome_email_enqueue(account_id=account.id)
    return account
