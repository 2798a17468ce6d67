"""Example workers for backy-gevent, registered as backy.workers entry points."""
