"""Reload benchmark: stock gunicorn vs uvicorn --workers vs rollover, side by side.

Run it with ``python -m bench.reload`` (see ``bench/README.md``).
"""
