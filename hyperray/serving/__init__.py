"""Serving: Ray Serve endpoints that turn task instructions into adapters and answers.

``build_app`` (``hyperray.serving.app:build_app``) is the Serve application builder that
``jobs/serve.yaml`` and ``jobs/serve.py`` use; :class:`ServeArgs` are its typed arguments.
"""

from hyperray.serving.schemas import ServeArgs

__all__ = ["ServeArgs", "build_app"]


def build_app(args):
    from hyperray.serving.app import build_app as build

    return build(args)
