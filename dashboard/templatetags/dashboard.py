from django import template

from config.money import NANOS_PER_USD
from dashboard.navigation import nav_links

register = template.Library()


def _group_thousands(whole: int) -> str:
    return f"{whole:,}"


@register.filter
def usd(nanos, places=None) -> str:
    """Nano-dollars as dollars: "$12.34", "-$0.50", "$0.000072".

    Without an argument, exact: at least two decimals, more only when they are not zero
    (per-second prices). With one, rounded half up to that many places (totals, axes)."""
    if nanos is None or nanos == "":
        return ""
    nanos = int(nanos)
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if places not in (None, ""):
        places = int(places)
        unit = 10 ** (9 - places)
        nanos = (nanos + unit // 2) // unit * unit
    whole, frac = divmod(nanos, NANOS_PER_USD)
    digits = f"{frac:09d}".rstrip("0")
    if places not in (None, ""):
        digits = digits[:places].ljust(places, "0")
    else:
        digits = digits.ljust(2, "0")
    text = _group_thousands(whole) + ("." + digits if digits else "")
    return f"{sign}${text}"


@register.filter
def thousands(value) -> str:
    """A whole count with thousands separators: 690900 -> "690,900"."""
    if value is None or value == "":
        return ""
    return f"{int(value):,}"


@register.simple_tag(takes_context=True)
def dashboard_nav(context) -> list[dict]:
    request = context.get("request")
    current = context.get("nav_section")
    if current is None and request is not None and request.resolver_match:
        current = request.resolver_match.view_name
    return nav_links(current or "")
