"""The demo's "code version": edit it, then HUP the master to roll it out."""

VERSION = "1"
