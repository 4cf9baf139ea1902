"""In-process caches for the run path: API keys and the model catalog.

The run path must not query the catalog on every call. Entries live a few seconds, so
staff edits to prices reach every process quickly; a key's revocation needs no
invalidation at all, because the authorize statement itself checks that the key is
neither revoked nor expired (the cache only maps a key's hash to its ids, which never
change)."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.models import Account, ApiKey
from accounts.services import api_key_hash
from billing.models import Plan
from config.api import ApplicationError
from config.caching import TtlCache
from metering.models import InferenceModel, PricingPolicy, SizeClass

CATALOG_TTL_SECONDS = 5.0
UNKNOWN_KEY_TTL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class KeyRef:
    key_id: UUID
    account_id: UUID


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What the run path needs to know about a model, with its size class resolved."""

    id: str
    kind: str
    size_class: str | None
    class_params_b: Decimal  # the size a tier must unlock (0 for closed models)
    nanos_per_second: int
    weight: int
    input_nanos_per_mtok: int
    output_nanos_per_mtok: int


@dataclass(frozen=True, slots=True)
class Policy:
    platform_fee_ppm: int
    byok_fee_nanos: int
    default_estimate_seconds: int
    default_estimate_input_tokens: int
    default_estimate_output_tokens: int


_keys = TtlCache(ttl=300.0)
_models = TtlCache(ttl=CATALOG_TTL_SECONDS)
_policy = TtlCache(ttl=CATALOG_TTL_SECONDS)
_plans = TtlCache(ttl=CATALOG_TTL_SECONDS)
_account_plans = TtlCache(ttl=CATALOG_TTL_SECONDS)


def api_key_ref(presented_key: str) -> KeyRef | None:
    """The ids behind a presented key, or None for an unknown one. Usability (revoked,
    expired) is checked by the caller against the database."""
    key_hash = api_key_hash(presented_key)

    def load():
        # Only inference keys run models: a management key is unknown here. A key's kind
        # never changes, so the cache may hold this answer as long as any other.
        row = (ApiKey.objects.filter(key_hash=key_hash, kind=ApiKey.Kind.INFERENCE)
               .values_list("id", "account_id").first())
        return KeyRef(*row) if row else None

    # Forget unknown keys soon: a key created a moment ago must work at once.
    return _keys.get(key_hash, load, none_ttl=UNKNOWN_KEY_TTL_SECONDS)


def model_price(model_id: str) -> ModelPrice | None:
    def load():
        model = InferenceModel.objects.filter(id=model_id).first()
        if model is None:
            return None
        if model.kind == InferenceModel.Kind.CLOSED:
            return ModelPrice(id=model.id, kind=model.kind, size_class=None,
                              class_params_b=Decimal(0), nanos_per_second=0, weight=0,
                              input_nanos_per_mtok=model.input_nanos_per_mtok or 0,
                              output_nanos_per_mtok=model.output_nanos_per_mtok or 0)
        size_class = (SizeClass.objects.filter(max_params_b__gte=model.params_b)
                      .order_by("max_params_b").first())
        if size_class is None:
            return None  # larger than every class: cannot be run or priced
        return ModelPrice(id=model.id, kind=model.kind, size_class=size_class.name,
                          class_params_b=size_class.max_params_b,
                          nanos_per_second=size_class.nanos_per_second,
                          weight=size_class.concurrency_weight,
                          input_nanos_per_mtok=0, output_nanos_per_mtok=0)

    # An unknown model is not remembered: a model the platform has just added must run
    # at once on every process (asking for unknown ones is rare, and costs one query).
    return _models.get(model_id, load, none_ttl=0)


def pricing_policy() -> Policy:
    def load():
        policy, _ = PricingPolicy.objects.get_or_create(id=1)
        return Policy(platform_fee_ppm=policy.platform_fee_ppm,
                      byok_fee_nanos=policy.byok_fee_nanos,
                      default_estimate_seconds=policy.default_estimate_seconds,
                      default_estimate_input_tokens=policy.default_estimate_input_tokens,
                      default_estimate_output_tokens=policy.default_estimate_output_tokens)

    return _policy.get(1, load)


def plan_closed_rps(plan_code: str) -> int | None:
    """Closed-model requests per second allowed on a plan (None: unlimited)."""
    return _plans.get(plan_code, lambda: Plan.objects.filter(code=plan_code)
                      .values_list("closed_requests_per_second", flat=True).first())


def account_plan_code(account_id: UUID) -> str | None:
    return _account_plans.get(account_id, lambda: Account.objects.filter(id=account_id)
                              .values_list("plan_id", flat=True).first())


def catalog_caches_clear() -> None:
    """Forget everything cached in this process (after staff edit the catalog here; other
    processes follow within CATALOG_TTL_SECONDS)."""
    for cache in (_keys, _models, _policy, _plans, _account_plans):
        cache.clear()


# --- Catalog writes --------------------------------------------------------------------


class ModelNotFound(ApplicationError):
    status = 404
    code = "model_not_found"
    message = "No model with this id."


class ModelTooLarge(ApplicationError):
    code = "invalid_request"


@transaction.atomic
def model_upsert(*, model_id: str, kind: str, params_b: Decimal | None = None,
                 provider: str = "", input_nanos_per_mtok: int | None = None,
                 output_nanos_per_mtok: int | None = None,
                 now: datetime | None = None) -> tuple[InferenceModel, bool]:
    """Create or replace a model in the catalog."""
    now = now or timezone.now()
    if kind == InferenceModel.Kind.OPEN:
        largest = SizeClass.objects.order_by("-max_params_b").first()
        if largest is None or params_b > largest.max_params_b:
            limit = f"{largest.max_params_b.normalize():f}B" if largest else "no size class"
            raise ModelTooLarge(
                f"No size class holds a {params_b.normalize():f}B model (largest: {limit}).",
                extra={"fields": {"params_b": [f"At most {limit}."]}},
            )
        values = {"kind": kind, "params_b": params_b, "provider": "",
                  "input_nanos_per_mtok": None, "output_nanos_per_mtok": None}
    else:
        values = {"kind": kind, "params_b": None, "provider": provider,
                  "input_nanos_per_mtok": input_nanos_per_mtok,
                  "output_nanos_per_mtok": output_nanos_per_mtok}
    model, created = InferenceModel.objects.update_or_create(
        id=model_id, defaults={**values, "updated_at": now}, create_defaults={
            **values, "created_at": now, "updated_at": now})
    # Now for this transaction's own reads, and after commit for everyone else's.
    catalog_caches_clear()
    transaction.on_commit(catalog_caches_clear)
    return model, created
