"""``quadmix-stream run``: label → search → train → report in one command."""
