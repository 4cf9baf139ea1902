from datetime import timedelta

from django import forms
from django.utils import timezone

from accounts.models import ApiKey
from config.money import MAX_AMOUNT_NANOS, MoneyFormatError, nanos_to_usd, usd_to_nanos
from dashboard.selectors import UsageFilter

USAGE_MAX_DAYS = 366


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True,
                           help_text="To tell your keys apart, e.g. the app that uses it.")
    kind = forms.ChoiceField(
        label="Kind", initial=ApiKey.Kind.INFERENCE,
        choices=[(ApiKey.Kind.INFERENCE, "Inference: runs models"),
                 (ApiKey.Kind.MANAGEMENT, "Management: buys credits, changes billing")],
        help_text="An inference key can never spend your card; keep management keys on "
        "your servers.")


class UsageFilterForm(forms.Form):
    start = forms.DateField(label="From", required=False,
                            widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False,
                          widget=forms.DateInput(attrs={"type": "date"}))
    model = forms.ChoiceField(label="Model", required=False)
    key = forms.ChoiceField(label="API key", required=False)
    kind = forms.ChoiceField(label="Models", required=False, choices=[
        ("", "Open and closed"), ("open", "Open models"), ("closed", "Closed models")])
    group = forms.ChoiceField(label="Rows", required=False, choices=[
        ("day", "By day and model"), ("model", "By model")])

    def __init__(self, *args, model_ids: list[str], keys: list[ApiKey], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", "All models")] + [(m, m) for m in model_ids]
        # Only this account's keys are choices: another account's key id is an error.
        self.fields["key"].choices = [("", "All keys")] + [
            (str(k.id), f"{k.name} ({k.prefix}…)") for k in keys]

    def clean(self):
        data = super().clean()
        today = timezone.now().date()
        end = data.get("end") or today
        start = data.get("start") or end - timedelta(days=29)
        if "start" in self.errors or "end" in self.errors:
            return data
        if start > end:
            self.add_error("start", "Must be on or before the end date.")
        elif (end - start).days + 1 > USAGE_MAX_DAYS:
            self.add_error("start", f"At most {USAGE_MAX_DAYS} days at a time.")
        data["start"], data["end"] = start, end
        return data

    def usage_filter(self) -> UsageFilter:
        data = self.cleaned_data
        return UsageFilter(start=data["start"], end=data["end"], model_id=data["model"],
                           api_key_id=data["key"] or None, kind=data["kind"],
                           group=data["group"] or "day")


class KeySpendLimitForm(forms.Form):
    """A key's spend limit: an amount in dollars per period; empty: no limit."""

    limit_usd = forms.CharField(
        label="Spend limit (USD)", required=False, strip=False, max_length=40,
        help_text="Runs that would take the key past it are refused. Empty: no limit.")
    period = forms.ChoiceField(
        label="Per", initial=ApiKey.SpendPeriod.MONTH,
        choices=[(ApiKey.SpendPeriod.DAY, "UTC day"), (ApiKey.SpendPeriod.WEEK, "ISO week"),
                 (ApiKey.SpendPeriod.MONTH, "UTC month"),
                 (ApiKey.SpendPeriod.TOTAL, "In total (never resets)")])

    def clean_limit_usd(self) -> int | None:
        text = self.cleaned_data["limit_usd"]
        if text == "":
            return None
        try:
            nanos = usd_to_nanos(text)
        except MoneyFormatError as exc:
            raise forms.ValidationError(str(exc)) from exc
        if nanos > MAX_AMOUNT_NANOS:
            raise forms.ValidationError(f"At most ${nanos_to_usd(MAX_AMOUNT_NANOS)}.")
        return nanos
