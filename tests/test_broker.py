"""The broker fixtures are real: mosquitto with auth, ACLs, TLS, persistence; paho clients against it.

Negative checks ("not delivered") never sleep: the denied message is followed by a permitted
marker on the same connection, and mosquitto delivers one client's messages in order, so once the
marker is in, the denied message would be too.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from paho.mqtt.enums import MQTTProtocolVersion

from devkit.broker import Mosquitto
from devkit.mqtt_client import Subscriber, publish
from devkit.mqtt_types import BrokerRefusedError, MQTTv5, MQTTv311
from devkit.pki import TestPki, TlsFiles

NOT_AUTHORIZED = 0x87
PROTOCOLS = [pytest.param(MQTTv5, id="mqtt5"), pytest.param(MQTTv311, id="mqtt311")]

ACL = """\
user dev1
topic write edge/dev1/#
topic read edge/dev1/cmd/#

user admin
topic readwrite #
"""
USERS = {"dev1": "dev1-secret", "admin": "admin-secret"}


def test_roundtrip_anonymous(broker: Mosquitto) -> None:
    with Subscriber(broker.host, broker.port, "edge/dev1/#", client_id="roundtrip-sub") as sub:
        assert broker.wait_for_log("as roundtrip-sub")
        code = publish(
            broker.host,
            broker.port,
            "edge/dev1/pipelines/p/results",
            {"seq": 1, "result": "ok"},
            user_properties=[("schema", "v1")],
        )
        assert code == "Success"
        [message] = sub.expect("edge/dev1/pipelines/+/results")
    assert message.topic == "edge/dev1/pipelines/p/results"
    assert message.qos == 1
    assert not message.retain
    assert message.user_property_dict == {"schema": "v1"}
    assert sub.json("edge/#") == [{"seq": 1, "result": "ok"}]


def test_publish_without_subscribers_gets_no_matching_subscribers(broker: Mosquitto) -> None:
    code = broker.publish("edge/nobody/listens", b"x")
    assert code == 0x10  # MQTT 5 PUBACK "No matching subscribers": not a failure
    assert not code.is_failure


def test_retained_message_reaches_late_subscriber(broker: Mosquitto) -> None:
    broker.publish("edge/dev1/status", {"state": "online"}, retain=True)
    broker.publish("edge/dev1/events", {"event": "gone before anyone listened"})
    with broker.subscriber("edge/dev1/#") as late:
        [message] = late.expect("edge/dev1/status")
        assert message.retain
        assert message.json() == {"state": "online"}
        # a live publish reaches a subscriber with the retain flag cleared
        broker.publish("edge/dev1/status", {"state": "stopping"}, retain=True)
        late.expect("edge/dev1/status", count=2)
        assert [m.retain for m in late.messages("edge/dev1/status")] == [True, False]
        assert late.messages("edge/dev1/events") == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_password_file(make_broker: Callable[..., Mosquitto], protocol: MQTTProtocolVersion) -> None:
    server = make_broker(users=USERS)
    with server.subscriber("edge/#", username="admin", password="admin-secret", protocol=protocol) as sub:
        assert server.publish("edge/x", "hi", username="dev1", password="dev1-secret", protocol=protocol) == 0
        assert sub.expect("edge/x")[0].payload == b"hi"

    # mosquitto 2.0.11 answers every refusal with "not authorised" (MQTT 3.1.1 CONNACK 5, which
    # paho maps to 0x87), never 0x86 "Bad user name or password"
    for username, password in [("dev1", "wrong"), ("nobody", "x"), (None, None)]:
        with pytest.raises(BrokerRefusedError) as refused:
            server.subscriber("edge/#", username=username, password=password, protocol=protocol)
        assert refused.value.reason_code == NOT_AUTHORIZED, refused.value
        assert refused.value.reason_code == "Not authorized"
    assert "disconnected, not authorised" in server.log_text()


def test_tls_with_test_ca(make_broker: Callable[..., Mosquitto], pki: TestPki) -> None:
    server = make_broker(tls=pki)
    with Subscriber(server.host, server.port, "edge/#", tls=pki.tls()) as sub:
        assert publish(server.host, server.port, "edge/tls", "secret", tls=pki.tls()) == "Success"
        assert sub.expect("edge/tls")[0].payload == b"secret"


def test_tls_with_other_ca_fails_verification(make_broker: Callable[..., Mosquitto], pki: TestPki) -> None:
    server = make_broker(tls=pki)
    with pytest.raises(BrokerRefusedError) as refused:
        Subscriber(server.host, server.port, "edge/#", tls=pki.wrong_ca_tls())
    assert refused.value.reason_code is None
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.error
    with pytest.raises(BrokerRefusedError):  # plain MQTT on a TLS-only listener
        Subscriber(server.host, server.port, "edge/#", timeout=3.0)


def test_mutual_tls_requires_client_cert(make_broker: Callable[..., Mosquitto], pki: TestPki) -> None:
    server = make_broker(tls=pki, require_certificate=True)
    with server.subscriber("edge/#") as sub:  # the broker's default client TLS has the client cert
        assert server.publish("edge/mtls", "ok") == "Success"
        sub.expect("edge/mtls")

    for tls in (pki.tls(), TlsFiles(pki.ca_cert, pki.other_client_cert, pki.other_client_key)):
        with pytest.raises(BrokerRefusedError) as refused:
            Subscriber(server.host, server.port, "edge/#", tls=tls)
        assert refused.value.reason_code is None  # the TLS session dies before any CONNACK
    log = server.log_text()
    assert "peer did not return a certificate" in log or "certificate verify failed" in log, log


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_queued_message_survives_restart(broker: Mosquitto, protocol: MQTTProtocolVersion) -> None:
    client_id = "persistent-sub"
    broker.subscriber("edge/dev1/#", client_id=client_id, persistent=True, protocol=protocol).close()
    assert broker.publish("edge/dev1/cmd/ping", {"id": "1"}) == "Success"  # queued for the session
    port = broker.port

    broker.restart()

    assert broker.port == port
    with broker.subscriber("edge/dev1/#", client_id=client_id, persistent=True, protocol=protocol) as sub:
        assert sub.session_present
        assert sub.expect("edge/dev1/cmd/ping")[0].json() == {"id": "1"}


def test_without_persistence_restart_forgets_sessions(make_broker: Callable[..., Mosquitto]) -> None:
    server = make_broker(persistence=False)
    server.subscriber("edge/#", client_id="forgotten", persistent=True).close()
    server.publish("edge/lost", "x")
    server.restart()
    with server.subscriber("edge/#", client_id="forgotten", persistent=True) as sub:
        assert sub.session_present is False
        server.publish("edge/marker", "m")
        sub.expect("edge/marker")
        assert sub.messages("edge/lost") == []


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_connected_subscriber_reconnects_and_resubscribes(broker: Mosquitto, hard: bool) -> None:
    with broker.subscriber("edge/#") as sub:  # clean session: only resubscribing brings it back
        connections = sub.connections
        broker.restart(hard=hard)
        assert sub.wait_ready(after=connections), sub.errors()
        assert sub.connections == connections + 1
        assert sub.session_present is False
        broker.publish("edge/after-restart", "1")
        sub.expect("edge/after-restart")


def test_persistent_subscriber_stays_connected_across_restart(broker: Mosquitto) -> None:
    with broker.subscriber("edge/#", client_id="stays", persistent=True) as sub:
        connections = sub.connections
        broker.restart()
        assert sub.wait_ready(after=connections), sub.errors()
        assert sub.session_present  # the broker restored the session from its database
        broker.publish("edge/after-restart", "1")
        sub.expect("edge/after-restart")


def test_acl_restricts_publish_and_read(make_broker: Callable[..., Mosquitto]) -> None:
    server = make_broker(users=USERS, acl=ACL)
    dev1 = {"username": "dev1", "password": "dev1-secret"}
    admin = {"username": "admin", "password": "admin-secret"}
    with server.subscriber("#", **admin) as watcher:
        # MQTT 5: the PUBACK says "Not authorized"; MQTT 3.1.1: Success, and the message is dropped
        assert server.publish("edge/dev2/results", "v5", **dev1) == NOT_AUTHORIZED
        assert server.publish("edge/dev2/results", "v3", protocol=MQTTv311, **dev1) == "Success"
        assert server.publish("other/topic", "v5", **dev1) == NOT_AUTHORIZED
        assert server.publish("edge/dev1/results", "marker", **dev1) == "Success"
        watcher.expect("edge/dev1/results")
        assert [m.topic for m in watcher.messages()] == ["edge/dev1/results"]
    assert "Denied PUBLISH" in server.log_text()

    # reading: mosquitto 2.0 grants any SUBSCRIBE, and filters on delivery
    with server.subscriber(["edge/dev1/cmd/#", "edge/dev1/status"], **dev1) as device:
        assert [code.value for code in device.granted] == [1, 1]
        server.publish("edge/dev1/status", "not readable by dev1", **admin)
        server.publish("edge/dev1/cmd/ping", {"id": "7"}, **admin)
        device.expect("edge/dev1/cmd/ping")
        assert [m.topic for m in device.messages()] == ["edge/dev1/cmd/ping"]


def test_paused_broker_hangs_then_resumes(broker: Mosquitto) -> None:
    with broker.subscriber("edge/#") as sub:
        broker.pause()
        with pytest.raises(BrokerRefusedError, match=r"within 1\.0 s"):
            broker.publish("edge/while-paused", "x", timeout=1.0)  # TCP connects, nothing answers
        broker.resume()
        assert broker.publish("edge/resumed", "y") == "Success"
        sub.expect("edge/resumed")
    broker.pause()  # stop() must also end a paused broker


def test_start_failure_fails_with_the_log(tmp_path: Path) -> None:
    server = Mosquitto(tmp_path, extra_config="no_such_option true")
    with pytest.raises(pytest.fail.Exception, match='Unknown configuration variable "no_such_option"'):
        server.start()
    assert not server.running


def test_pki_files(pki: TestPki) -> None:
    for key in (pki.client_key, pki.server_key, pki.ca_key, pki.other_client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    other_ca = x509.load_pem_x509_certificate(pki.other_ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    san = server.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        client.verify_directly_issued_by(other_ca)
