"""The service's own commands (`distill serve`, `keys`, `projects`), apart from the client.

They import store, api and worker, so they live here rather than in `client/`, which speaks
only HTTP and installs without them (`pip install 'distillery[client]'`).
"""
