from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from config.api import ApplicationError
from metering.models import InferenceModel, SizeClass


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
    return model, created
