from django.urls import path

from metering.apis import (
    HoldAuthorizeApi,
    HoldHeartbeatApi,
    HoldReleaseApi,
    HoldSettleApi,
    ModelDetailApi,
)

urlpatterns = [
    path("authorize", HoldAuthorizeApi.as_view(), name="hold-authorize"),
    path("holds/<str:hold_id>/settle", HoldSettleApi.as_view(), name="hold-settle"),
    path("holds/<str:hold_id>/release", HoldReleaseApi.as_view(), name="hold-release"),
    path("holds/<str:hold_id>/heartbeat", HoldHeartbeatApi.as_view(), name="hold-heartbeat"),
    # Model ids may contain "/" (meta-llama/Llama-3-70b).
    path("models/<path:model_id>", ModelDetailApi.as_view(), name="model-detail"),
]
