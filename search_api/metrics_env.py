"""The environment variable that makes prometheus_client share metrics between gunicorn workers.

In a module of its own: the arbiter (search_api/serve.py) sets it without importing prometheus_client,
which reads it once, when it is imported (search_api/metrics.py).
"""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
