"""The console's two roles, as groups with permissions (the permissions themselves are
what the console checks on every action):

- Support: reads everything; grants credit up to STAFF_SUPPORT_GRANT_LIMIT_USD; suspends
  and reinstates; force-releases holds; revokes keys; resumes a paused auto-reload.
- Finance: all of Support, and refunds, credit adjustments, grants beyond the limit,
  reprocessing Stripe events, and editing the price, size-class, tier, plan and model
  tables.

Staff members are put in a group on their user page; they also need "staff status" and
a TOTP device to sign in."""

from django.db import migrations

READ_MODELS = [
    ("accounts", "account"), ("accounts", "apikey"), ("billing", "creditlot"),
    ("billing", "purchase"), ("billing", "ledgertransaction"), ("billing", "billingprofile"),
    ("billing", "card"), ("billing", "payment"), ("billing", "stripeevent"),
    ("billing", "subscription"), ("billing", "reversal"), ("billing", "dispute"),
    ("billing", "plan"), ("metering", "sizeclass"), ("metering", "inferencemodel"),
    ("metering", "pricingpolicy"), ("metering", "hold"), ("metering", "usagerecord"),
    ("ratelimits", "tier"), ("console", "staffaction"),
]
TABLES = [("billing", "plan"), ("metering", "sizeclass"), ("metering", "inferencemodel"),
          ("metering", "pricingpolicy"), ("ratelimits", "tier")]
SUPPORT_ACTIONS = ["grant_credit", "suspend_account", "release_hold", "revoke_key",
                   "resume_auto_reload"]
FINANCE_ACTIONS = [*SUPPORT_ACTIONS, "grant_credit_unlimited", "adjust_credit",
                   "refund_purchase", "reprocess_stripe_event"]


def _permissions_ensure(apps):
    # Permissions are normally created after all migrations ran; this migration needs them.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def forward(apps, schema_editor):
    _permissions_ensure(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    def perm(app_label, codename):
        return Permission.objects.get(content_type__app_label=app_label, codename=codename)

    reads = [perm(app, f"view_{model}") for app, model in READ_MODELS]
    support, _ = Group.objects.get_or_create(name="Support")
    support.permissions.set([*reads, *(perm("console", c) for c in SUPPORT_ACTIONS)])
    finance, _ = Group.objects.get_or_create(name="Finance")
    finance.permissions.set([
        *reads, *(perm("console", c) for c in FINANCE_ACTIONS),
        *(perm(app, f"{verb}_{model}") for app, model in TABLES for verb in ("add", "change")),
    ])


def backward(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["Support", "Finance"]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0002_staff_action_append_only"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("accounts", "0004_account_fillfactor"),
        ("billing", "0007_lot_index_without_remaining"),
        ("metering", "0006_settle_function"),
        ("ratelimits", "0002_seed_tiers"),
    ]
    operations = [migrations.RunPython(forward, backward)]
