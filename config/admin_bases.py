from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records (lots, ledger, payments, holds, usage) are written by services only;
    staff read them here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def usd(nanos: int | None) -> str:
    """Nano-dollars as staff read money: "$26.00", "$0.000072", "-$4.50"."""
    if nanos is None:
        return "—"
    whole, frac = divmod(abs(int(nanos)), 10**9)
    cents = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{'-' if nanos < 0 else ''}${whole:,}.{cents}"


class UsdNanosField(forms.CharField):
    """A form field in dollars ("0.000072") for a nano-dollar column."""

    default_error_messages = {
        "invalid": 'Enter an amount in US dollars, e.g. "10.00".',
        "precision": "At most 9 decimal places.",
        "negative": "Must not be negative.",
    }

    def __init__(self, *, allow_negative: bool = False, **kwargs):
        self.allow_negative = allow_negative
        kwargs.pop("max_length", None)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, int):
            return usd(value).replace("$", "").replace(",", "")
        return value

    def to_python(self, value):
        text = (value or "").strip().replace("$", "").replace(",", "")
        if text in self.empty_values:
            return None
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise forms.ValidationError(self.error_messages["invalid"],
                                        code="invalid") from None
        if not amount.is_finite():
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        nanos = amount * 10**9
        if nanos != nanos.to_integral_value():
            raise forms.ValidationError(self.error_messages["precision"], code="precision")
        if nanos < 0 and not self.allow_negative:
            raise forms.ValidationError(self.error_messages["negative"], code="negative")
        return int(nanos)
