import csv
from datetime import UTC, timedelta

from allauth.account.views import LoginView
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from config.money import nanos_to_usd
from dashboard.access import customer_view
from dashboard.charts import spend_chart
from dashboard.forms import ApiKeyCreateForm, KeySpendLimitForm, UsageFilterForm
from dashboard.selectors import (
    api_key_of_account,
    api_keys_with_month_spend,
    model_catalog,
    overview_get,
    purchase_minimum_nanos,
    tier_status,
    usage_model_ids,
    usage_rows,
    usage_rows_iter,
    usage_totals,
)
from metering.key_limits import SpendLimitInvalid, api_key_spend_limit_set, key_spend_summary
from metering.selectors import account_current

USAGE_PAGE_SIZE = 50


def front_door(request):
    """`/`: the customer's login; signed in, the overview (staff: the console)."""
    if request.user.is_authenticated:
        if request.user.is_staff and not hasattr(request.user, "account"):
            return redirect("admin:index")
        return redirect("dashboard:overview")
    return LoginView.as_view()(request)


@require_GET
@customer_view
def overview(request):
    now = timezone.now()
    account = account_current(account_id=request.account.id, now=now)
    data = overview_get(account=account, now=now)
    return render(request, "dashboard/overview.html", {
        "overview": data,
        "account": account,
        "chart": spend_chart(data.spend_days),
        "purchase_minimum_nanos": purchase_minimum_nanos(),
        "now": now,
    })


def _keys_page(request, *, form, created=None, created_secret=None, status=200):
    keys = api_keys_with_month_spend(account_id=request.account.id, now=timezone.now())
    response = render(request, "dashboard/keys.html", {
        "form": form,
        "active_keys": [k for k in keys if k.usable],
        "inactive_keys": [k for k in keys if not k.usable],
        "created": created,
        "created_secret": created_secret,
    }, status=status)
    # The page may carry a secret that is shown once: never cached.
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@customer_view
def keys(request):
    if request.method == "POST":
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            api_key, secret = api_key_create(account_id=request.account.id,
                                             name=form.cleaned_data["name"],
                                             kind=form.cleaned_data["kind"])
            return _keys_page(request, form=ApiKeyCreateForm(), created=api_key,
                              created_secret=secret, status=201)
        return _keys_page(request, form=form, status=400)
    return _keys_page(request, form=ApiKeyCreateForm())


@require_http_methods(["GET", "POST"])
@customer_view
def key_revoke(request, key_id):
    api_key = api_key_of_account(account_id=request.account.id, key_id=key_id)
    if api_key is None:
        raise Http404("No such key.")
    if request.method == "POST":
        api_key_revoke(account_id=request.account.id, key_id=api_key.id)
        return redirect(reverse("dashboard:keys") + "?revoked=" + api_key.prefix)
    return render(request, "dashboard/key_revoke.html", {"key": api_key,
                                                         "nav_section": "dashboard:keys"})


@require_http_methods(["GET", "POST"])
@customer_view
def key_limit(request, key_id):
    """A key's spend limit: what it spent this period, when that resets, and the form."""
    api_key = api_key_of_account(account_id=request.account.id, key_id=key_id)
    if api_key is None:
        raise Http404("No such key.")
    status = 200
    if request.method == "POST" and api_key.revoked_at is None:
        form = KeySpendLimitForm(request.POST)
        if form.is_valid():
            limit = form.cleaned_data["limit_usd"]
            try:
                api_key_spend_limit_set(
                    account_id=request.account.id, key_id=api_key.id, limit_nanos=limit,
                    period=form.cleaned_data["period"] if limit is not None else None)
            except SpendLimitInvalid as exc:
                for field, reasons in exc.extra.get("fields", {}).items():
                    form.add_error(SPEND_LIMIT_FIELDS.get(field), reasons)
            else:
                return redirect(reverse("dashboard:keys") + "?limit=" + api_key.prefix)
        status = 400
    else:
        form = KeySpendLimitForm(initial={
            "limit_usd": (nanos_to_usd(api_key.spend_limit_nanos).rstrip("0").rstrip(".")
                          if api_key.spend_limit_nanos is not None else ""),
            "period": api_key.spend_limit_period or ApiKey.SpendPeriod.MONTH})
    summary = key_spend_summary(account_id=request.account.id, key_id=api_key.id)
    return render(request, "dashboard/key_limit.html", {
        "key": api_key, "summary": summary, "form": form,
        "nav_section": "dashboard:keys"}, status=status)


# The service's field names, as the form names them.
SPEND_LIMIT_FIELDS = {"spend_limit_usd": "limit_usd", "spend_limit_period": "period"}


def _usage_form(request) -> UsageFilterForm:
    keys = api_keys_with_month_spend(account_id=request.account.id, now=timezone.now())
    # Always bound: no filter in the URL means the defaults (the last 30 days), shown in
    # the date fields.
    data = request.GET.copy()
    today = timezone.now().date()
    if not data.get("end"):
        data["end"] = today.isoformat()
    if not data.get("start"):
        data["start"] = (today - timedelta(days=29)).isoformat()
    return UsageFilterForm(data, model_ids=usage_model_ids(account_id=request.account.id),
                           keys=keys)


@require_GET
@customer_view
def usage(request):
    form = _usage_form(request)
    context = {"form": form, "page": None, "totals": None}
    status = 200
    if form.is_valid():
        filters = form.usage_filter()
        rows = usage_rows(account_id=request.account.id, filters=filters, tz=UTC)
        paginator = Paginator(rows, USAGE_PAGE_SIZE)
        page = paginator.get_page(request.GET.get("page"))
        query = request.GET.copy()
        query.pop("page", None)
        context.update({
            "filters": filters,
            "page": page,
            "totals": usage_totals(account_id=request.account.id, filters=filters, tz=UTC),
            "query": query.urlencode(),
        })
    else:
        status = 400
    return render(request, "dashboard/usage.html", context, status=status)


class _Echo:
    def write(self, value):
        return value


CSV_HEADER_DAY = ["date", "model", "kind", "runs", "billed_seconds", "input_tokens",
                  "output_tokens", "charged_usd"]
CSV_HEADER_MODEL = ["model", "kind", "runs", "billed_seconds", "input_tokens",
                    "output_tokens", "charged_usd"]


def _csv_lines(rows, group: str):
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER_MODEL if group == "model" else CSV_HEADER_DAY)
    for row in rows:
        values = [row["model_id"], row["kind"], row["runs"], row["billed_seconds"] or 0,
                  row["input_tokens"] or 0, row["output_tokens"] or 0,
                  nanos_to_usd(row["charged_nanos"] or 0)]
        if group != "model":
            values.insert(0, row["day"].isoformat())
        yield writer.writerow(values)


@require_GET
@customer_view
def usage_csv(request):
    form = _usage_form(request)
    if not form.is_valid():
        errors = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in form.errors.items())
        return HttpResponseBadRequest(f"Bad filter: {errors}\n", content_type="text/plain")
    filters = form.usage_filter()
    rows = usage_rows_iter(account_id=request.account.id, filters=filters, tz=UTC)
    response = StreamingHttpResponse(_csv_lines(rows, filters.group),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="usage-{filters.start}-{filters.end}.csv"')
    return response


@require_GET
@customer_view
@never_cache
def models(request):
    now = timezone.now()
    account = account_current(account_id=request.account.id, now=now)
    status = tier_status(account=account, now=now)
    return render(request, "dashboard/models.html", {
        "catalog": model_catalog(account=account, tiers=status.tiers),
        "tier": status,
        "account": account,
    })
