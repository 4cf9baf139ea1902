from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect

from accounts.models import Account


def customer_view(view):
    """A dashboard view: signed in, with a billing account, which is `request.account`.
    Staff without an account belong in the staff console."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        account = (Account.objects.select_related("user", "tier", "plan")
                   .filter(user=request.user).first())
        if account is None:
            if request.user.is_staff:
                return redirect("admin:index")
            raise PermissionDenied("This login has no billing account.")
        request.account = account
        return view(request, *args, **kwargs)

    return wrapper
