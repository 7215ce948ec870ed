#!/bin/sh
# Start the service (API + background fit worker) with settings from AEOT_* variables.
set -eu
exec aeot serve "$@"
