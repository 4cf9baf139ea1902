from tests.runpath import catalog, eager_tasks, fresh_caches

__all__ = ["catalog", "eager_tasks", "fresh_caches"]
