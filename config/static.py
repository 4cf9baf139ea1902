"""Static files from the app servers (whitenoise)."""

import os

from django.conf import settings
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """whitenoise, without its warning about a missing STATIC_ROOT where files are served
    from the apps' own folders (development and tests, WHITENOISE_USE_FINDERS): only a
    production build runs collectstatic."""

    def add_files(self, root, prefix=None):
        if settings.WHITENOISE_USE_FINDERS and not os.path.isdir(root):
            return
        super().add_files(root, prefix)
