from django import template

from config.admin_bases import usd as usd_format

register = template.Library()


@register.filter
def usd(nanos):
    """Nano-dollars as dollars: {{ account.balance_nanos|usd }} -> "$26.00"."""
    return usd_format(nanos)
