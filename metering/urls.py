from django.urls import path

from metering.apis import ModelDetailApi

urlpatterns = [
    # Model ids may contain "/" (meta-llama/Llama-3-70b).
    path("models/<path:model_id>", ModelDetailApi.as_view(), name="model-detail"),
]
