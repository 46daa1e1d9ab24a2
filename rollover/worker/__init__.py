"""The worker side: what the master forks, and how a worker reports and drains.

`extend.extend_worker_class` is the entry: it finds the configured `-k` class's family by
its base classes and composes `readiness` (READY / failure over the master's pipe, the
readiness probe of `rollover.probe` through the class's own interface) with the family's
drain (`drain` for the shared pieces; `drain_uvicorn`, `drain_asgi`, `drain_gthread`).
"""
