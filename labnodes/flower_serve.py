"""Flower, Celery's web monitor, with every page behind its basic authentication.

Flower 2.2 answers `/metrics` (Prometheus: every worker's name, every task type and count) and `/healthcheck`
without authentication even when basic authentication is on; a student's host could read who runs what. This
module puts both behind the same check as every other page (401 without the password), then runs
`celery -A labnodes.celery_app flower ARGS` in this process:

    FLOWER_BASIC_AUTH=user:password python -m labnodes.flower_serve --address=10.77.1.10 --port=5555

The broker comes from labnodes settings, as for every Celery tool (`labnodes.celery_app`).
"""

from __future__ import annotations

import sys

GUARDED = ("Metrics", "Healthcheck")  # the flower.views.monitor handlers Flower leaves open


def require_auth() -> None:
    """Make Flower's open monitor pages run its own authentication check first (basic auth and OAuth alike)."""
    from flower.views import monitor

    for name in GUARDED:
        cls = getattr(monitor, name)
        if getattr(cls.get, "labnodes_guarded", False):
            continue
        open_get = cls.get

        async def get(self, *args, _open_get=open_get, **kwargs):
            if not self.get_current_user():  # raises HTTPError(401) on missing or wrong basic credentials
                raise _unauthorized()
            return await _open_get(self, *args, **kwargs)

        get.labnodes_guarded = True
        cls.get = get


def _unauthorized():
    import tornado.web
    return tornado.web.HTTPError(401)


def main(argv: list[str] | None = None) -> int:
    require_auth()
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "labnodes.celery_app", "flower", *(sys.argv[1:] if argv is None else argv)]
    return celery_main()


if __name__ == "__main__":
    sys.exit(main())
