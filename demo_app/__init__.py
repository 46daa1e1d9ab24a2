"""Demo apps for rollover: an ASGI (Starlette) app and a plain WSGI twin.

Edit ``demo_app/version.py`` and send HUP to watch the new code roll out worker by
worker. ``DEMO_BOOT_DELAY`` (seconds) slows the app import down and
``DEMO_FAIL_AT_IMPORT`` makes it raise, to simulate slow and broken deploys.
"""
