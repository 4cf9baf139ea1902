"""In-process caches for the run path: API keys and the model catalog.

The run path must not query the catalog on every call. Entries live a few seconds, so
staff edits to prices reach every process quickly; a key's revocation needs no
invalidation at all, because the authorize statement itself checks that the key is
neither revoked nor expired (the cache only maps a key's hash to its ids, which never
change)."""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from accounts.models import Account, ApiKey
from accounts.services import api_key_hash
from billing.models import Plan
from metering.models import InferenceModel, PricingPolicy, SizeClass

CATALOG_TTL_SECONDS = 5.0
UNKNOWN_KEY_TTL_SECONDS = 2.0
MAX_ENTRIES = 50_000


class TtlCache:
    """A bounded mapping whose entries expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, max_entries: int = MAX_ENTRIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        # gthread workers share the cache between threads: writes and evictions under a
        # lock (a read of a live entry needs none).
        self._lock = threading.Lock()

    def get(self, key, loader, none_ttl: float | None = None):
        """The value for `key`, loaded when missing or stale. A None (nothing found) is
        kept `none_ttl` seconds instead, when given (0: not kept)."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        value = loader()
        ttl = none_ttl if value is None and none_ttl is not None else self.ttl
        if ttl <= 0:
            return value
        with self._lock:
            self._entries[key] = (now + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
