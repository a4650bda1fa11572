"""One router per idea: jobs, events, metrics, artifacts, uploads, health."""
