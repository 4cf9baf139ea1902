from decimal import Decimal

from metering.models import InferenceModel, PricingPolicy, SizeClass


def size_class_for(*, params_b: Decimal) -> SizeClass | None:
    """The smallest size class whose size is at least the model's."""
    return SizeClass.objects.filter(max_params_b__gte=params_b).order_by("max_params_b").first()


def model_get(*, model_id: str) -> InferenceModel | None:
    return InferenceModel.objects.filter(id=model_id).first()


def pricing_policy_get() -> PricingPolicy:
    policy, _ = PricingPolicy.objects.get_or_create(id=1)
    return policy


def hold_discrepancies():
    """The run path's working counters against its holds (none before holds exist)."""
    return iter(())
