"""`python -m rollover.deploy ...`: `rollover deploy ...`."""

import argparse
import sys

from rollover.deploy.command import EPILOG, add_arguments, run

parser = argparse.ArgumentParser(prog="python -m rollover.deploy", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--pidfile", metavar="F",
                    help="the gunicorn master's pidfile (gunicorn --pid; default: pidfile in "
                    "<root>/rollover.toml)")
parser.add_argument("--status", metavar="S", help="the status file (default: next to the "
                    "pidfile, gunicorn.pid -> gunicorn.rollover.json)")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
