"""The reason forms of the console's actions. Amounts are typed in dollars."""

from django import forms

from config.admin_bases import UsdNanosField

REASON_HELP = "Why: kept in the audit log with your name, e.g. the support ticket."


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=1000,
                             help_text=REASON_HELP)

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


class GrantForm(ReasonForm):
    amount_usd = UsdNanosField(label="Amount (USD)", help_text="Promotional credit; it "
                               "expires like purchased credit and never raises the tier.")
    field_order = ["amount_usd", "reason"]

    def clean_amount_usd(self):
        amount = self.cleaned_data["amount_usd"]
        if amount is not None and amount <= 0:
            raise forms.ValidationError("Must be more than $0.")
        return amount


class AdjustForm(ReasonForm):
    amount_usd = UsdNanosField(
        label="Adjustment (USD)", allow_negative=True,
        help_text='A correction: "5.00" adds credit, "-5.00" takes it back (at most the '
        "available credit: what open runs reserve stays).")
    field_order = ["amount_usd", "reason"]

    def clean_amount_usd(self):
        amount = self.cleaned_data["amount_usd"]
        if amount == 0:
            raise forms.ValidationError("An adjustment of $0 changes nothing.")
        return amount


class RefundForm(ReasonForm):
    amount_usd = UsdNanosField(
        label="Amount (USD)", required=False,
        help_text="Leave empty to refund everything not refunded yet; whole cents.")
    field_order = ["amount_usd", "reason"]

    def clean_amount_usd(self):
        amount = self.cleaned_data["amount_usd"]
        if amount is not None and amount <= 0:
            raise forms.ValidationError("Must be more than $0.")
        return amount
