"""Forms of the money pages: credits, cards, auto-reload and auto-scale, plan. They read
dollars as the customer types them and hand the services integer nano-dollars."""

from django import forms
from django.conf import settings

from config.money import NANOS_PER_CENT, MoneyFormatError, nanos_to_usd, usd_to_nanos


def dollars_text(nanos: int) -> str:
    """Nano-dollars as a dollar amount to put back in a form field ("10.00", "0.50")."""
    text = nanos_to_usd(nanos)
    whole, frac = text.split(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac.ljust(2, '0')}"


class DollarsField(forms.CharField):
    """A dollar amount typed by a person: "25", "25.50", "$1,000". Cleaned to nanos."""

    def __init__(self, *, whole_cents: bool = True, allow_zero: bool = False, **kwargs):
        self.whole_cents = whole_cents
        self.allow_zero = allow_zero
        super().__init__(**kwargs)

    def widget_attrs(self, widget):
        attrs = super().widget_attrs(widget)
        attrs.update({"inputmode": "decimal", "autocomplete": "off", "maxlength": "16"})
        return attrs

    def prepare_value(self, value):
        return dollars_text(value) if isinstance(value, int) else value

    def to_python(self, value):
        text = super().to_python(value)
        if text in self.empty_values:
            return None
        if len(text) > 16:
            raise forms.ValidationError("Enter an amount in dollars, like 25.00.")
        if text in self.empty_values:
            return None
        text = text.strip().removeprefix("$").replace(",", "").strip()
        try:
            nanos = usd_to_nanos(text)
        except MoneyFormatError:
            raise forms.ValidationError("Enter an amount in dollars, like 25.00.") from None
        if nanos < 0:
            raise forms.ValidationError("Enter an amount that is not negative.")
        if self.whole_cents and nanos % NANOS_PER_CENT:
            raise forms.ValidationError("Enter whole cents (at most 2 decimal places).")
        if nanos == 0 and not self.allow_zero:
            raise forms.ValidationError("Enter an amount greater than zero.")
        if nanos > 10**6 * 10**9:
            raise forms.ValidationError("Enter at most $1,000,000.")
        return nanos


def purchase_limits_nanos() -> tuple[int, int]:
    return (settings.PURCHASE_MIN_CENTS * NANOS_PER_CENT,
            settings.PURCHASE_MAX_CENTS * NANOS_PER_CENT)


class PurchaseAmountField(DollarsField):
    def validate(self, value):
        super().validate(value)
        low, high = purchase_limits_nanos()
        if value is not None and not low <= value <= high:
            raise forms.ValidationError(
                f"Buy between ${dollars_text(low)} and ${dollars_text(high)}.")


NEW_CARD = "new"


class CreditPurchaseForm(forms.Form):
    """Buy credits with a saved card, or with a new card the browser has just set up
    (its SetupIntent id comes with the form)."""

    amount = PurchaseAmountField(label="Amount (USD)")
    card = forms.ChoiceField(label="Pay with")
    setup_intent_id = forms.CharField(required=False, max_length=255,
                                      widget=forms.HiddenInput)
    # One purchase per rendered form, however often it is submitted.
    idempotency_token = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args, cards, default_card_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(str(card.id), _card_label(card, default_card_id)) for card in cards]
        choices.append((NEW_CARD, "A new card"))
        self.fields["card"].choices = choices
        if default_card_id is not None:
            self.fields["card"].initial = str(default_card_id)
        elif not cards:
            self.fields["card"].initial = NEW_CARD

    def clean(self):
        data = super().clean()
        if data.get("card") == NEW_CARD and not data.get("setup_intent_id"):
            self.add_error("card", "Enter the new card's details (this needs JavaScript), "
                                   "or pay with a saved card.")
        return data


class PurchaseAmountForm(forms.Form):
    """The amount alone: checked before the browser sets up a new card, so that a bad
    amount saves no card."""

    amount = PurchaseAmountField(label="Amount (USD)")


class CardSaveForm(forms.Form):
    setup_intent_id = forms.CharField(max_length=255, widget=forms.HiddenInput)


def _card_label(card, default_card_id) -> str:
    label = f"{(card.brand or 'Card').title()} ending {card.last4}"
    if card.exp_month and card.exp_year:
        label += f", expires {card.exp_month:02d}/{card.exp_year % 100:02d}"
    if card.id == default_card_id:
        label += " (default)"
    return label


DEFAULT_CARD = ""


class AutoReloadForm(forms.Form):
    enabled = forms.BooleanField(required=False, label="Turn auto-reload on")
    threshold = DollarsField(label="When the balance falls below (USD)", allow_zero=True)
    amount = PurchaseAmountField(label="Add this much (USD)")
    monthly_max = DollarsField(label="At most this much per month (USD)", allow_zero=True)
    card = forms.ChoiceField(label="Card to charge", required=False)

    def __init__(self, *args, cards, default_card_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["card"].choices = [(DEFAULT_CARD, "The default card")] + [
            (str(card.id), _card_label(card, default_card_id)) for card in cards]

    def clean(self):
        data = super().clean()
        amount, monthly_max = data.get("amount"), data.get("monthly_max")
        if amount is not None and monthly_max is not None and monthly_max < amount:
            self.add_error("monthly_max", "Must be at least the amount added each time.")
        return data


class AutoScaleForm(forms.Form):
    max_monthly_spend = DollarsField(label="Most auto-scale may spend per month (USD)",
                                     allow_zero=True,
                                     help_text="0 turns auto-scale off.")
