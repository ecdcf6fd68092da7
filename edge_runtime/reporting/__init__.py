"""Where results go: stdout, MQTT (with the SQLite outbox), and the topic and payload builders."""
