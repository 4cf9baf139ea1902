from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Staff console"


class ConsoleAdminConfig(AdminConfig):
    """The Django admin, with the console's site (second factor, account search) as the
    default site, so every app's `@admin.register` lands on it."""

    default_site = "console.site.ConsoleAdminSite"
