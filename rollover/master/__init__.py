"""Runs in the gunicorn master, and only there (never in a worker, nor in `rollover` CLI).

`arbiter.RollingArbiter` is gunicorn's `Arbiter` with rollover's roll: it executes the pure
machine's decisions (`rollover.core.rollout`) from gunicorn's own main loop. Around it, one
module per concern: `hup` (the HUP as a transaction), `channel` (the workers' pipes),
`service` and `notify` (systemd, the status file's removal), `pinning` (release symlinks),
`config_reload` (gunicorn's config at HUP), `exits` (how worker exits are told), and
`gunicorn_compat` (what differs between gunicorn 23.0 and 27.x). What runs in a forked
child is only `arbiter._after_fork_in_child`, which closes the master's ends there.
"""
