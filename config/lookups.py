"""Fetch one object by a caller's id, or raise the caller's not-found error."""

from typing import TypeVar

from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet

from config.api import ApplicationError

M = TypeVar("M", bound=Model)


def get_or_raise(queryset: QuerySet[M], error: type[ApplicationError], **lookup) -> M:
    """The one object matching `lookup`. An id of the wrong shape (not a UUID, say) is
    the same not-found as an unknown one: a caller learns nothing from the difference."""
    try:
        return queryset.get(**lookup)
    except (queryset.model.DoesNotExist, ValidationError, ValueError, TypeError):
        raise error() from None
