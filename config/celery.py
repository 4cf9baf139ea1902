import os

from celery import Celery

from config import logs, metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("billing")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Request ids travel with tasks, the worker logs JSON lines, task outcomes are counted.
logs.connect_celery_signals()
metrics.connect_celery_signals()
