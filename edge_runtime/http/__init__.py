"""The local HTTP API and live page: status, health, results stream, live view, predict on demand.

``server`` runs Starlette on uvicorn in a thread of the daemon; it talks to the daemon only through
:class:`~edge_runtime.http.host.Host`. One module per API family: ``status`` (probes, status,
health, pipelines, models), ``stream`` (Server-Sent Events), ``media`` (snapshots, MJPEG),
``tfserving`` (TensorFlow Serving REST v1), ``oip`` (Open Inference Protocol v2), ``page`` (the
static page in ``static/``). See docs/http.md.
"""
