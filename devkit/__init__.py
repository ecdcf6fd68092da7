"""The developers' kit: what tests and tools share, not shipped in the wheel.

:mod:`.paths` (where models and data are), :mod:`.processes` (tools, ports, waits, socat ptys),
:mod:`.media` (video files, MJPEG cameras), :mod:`.broker` (a real mosquitto), :mod:`.mqtt_client`
and :mod:`.mqtt_types` (test MQTT clients), :mod:`.pki` (a test CA with server and client
certificates), :mod:`.daemon` (``edge-runtime run`` as a process, config builders).
"""
