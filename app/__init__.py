"""The protected inference service: serves a teacher checkpoint so that only a release policy's sparse
output ever leaves the server (docs/design.md, Wire contract).

``create_app(settings)`` builds the FastAPI application; ``stingy-serve`` (:mod:`app.cli`) runs it.
"""
