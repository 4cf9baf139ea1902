from allauth.account.adapter import DefaultAccountAdapter
from django.urls import reverse

from dashboard.services import customer_sign_up


class CustomerAccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user = super().save_user(request, user, form, commit=False)
        if commit:
            customer_sign_up(user=user)
        return user

    def get_login_redirect_url(self, request):
        user = request.user
        if user.is_staff and not hasattr(user, "account"):
            return reverse("admin:index")
        return super().get_login_redirect_url(request)
