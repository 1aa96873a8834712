"""Connectors end to end: Kafka Connect's REST API on a real broker's admin port, checked against Connect's
documentation, and the `sluice connector` / `sluice plugin` commands.

The conformance checks follow the Kafka Connect REST API as Apache Kafka and Confluent document it
(kafka.apache.org/documentation/#connect_rest, docs.confluent.io/platform/current/connect/references/restapi.html)
and the KIPs that added to it: KIP-745 (restart with includeTasks/onlyFailed: 202 with the connector state,
restarting instances shown RESTARTING), KIP-875 (PUT .../stop → 204, GET/PATCH/DELETE .../offsets in
{"offsets": [{"partition", "offset"}]} shapes, PATCH/DELETE only for STOPPED connectors, 200 with a "message"),
KIP-980 (POST /connectors with "initial_state"). Errors are {"error_code": <HTTP status>, "message": ...}: 404 for
an unknown connector, 409 for one that exists, 400 for a bad request.

These tests run the broker with SLUICE_CONNECT_TEST_PLUGINS=1, which registers the Rust fixture
`test-counter-source` (it writes "<task>:<n>" records to a topic and keeps {"task": t} -> {"next": n} positions),
so that the API is checked without building Wasm guests; a broker without it lists no connector plugins until
modules are uploaded. The first-party Wasm connectors run end to end in test_pipelines.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from harness import sluice_cli as sluice, REPO_ROOT, cf_consume, http_request, require_binary, unique, wait_for

COUNTER = "test-counter-source"
COMMITTED = {"isolation.level": "read_committed"}


@pytest.fixture
def connect_broker(make_broker, monkeypatch):
    monkeypatch.setenv("SLUICE_CONNECT_TEST_PLUGINS", "1")
    return make_broker()


def rest(broker, method: str, path: str, body=None):
    """(status, parsed JSON or None, headers)."""
    status, headers, raw = http_request(method, f"{broker.admin_url}{path}", body=body, timeout=30)
    parsed = json.loads(raw) if raw.strip() else None
    return status, parsed, {k.lower(): v for k, v in headers.items()}


def assert_connect_error(status_and_body, code: int, fragment: str = ""):
    status, body, _ = status_and_body
    assert status == code, f"expected {code}, got {status}: {body}"
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code
    assert fragment in body["message"], body["message"]


def counter_config(topic: str, **extra) -> dict:
    config = {"connector.class": COUNTER, "topic": topic, "counter.batch": "5"}
    config.update({k.replace("_", "."): str(v) for k, v in extra.items()})
    return config


def create(broker, name: str, config: dict, initial_state: str | None = None):
    body = {"name": name, "config": config}
    if initial_state:
        body["initial_state"] = initial_state
    status, info, headers = rest(broker, "POST", "/connectors", body)
    assert status == 201, info
    return info, headers


def state(broker, name: str) -> dict:
    status, body, _ = rest(broker, "GET", f"/connectors/{name}/status")
    assert status == 200, body
    return body


def task_states(broker, name: str) -> list[str]:
    return [t["state"] for t in state(broker, name)["tasks"]]


def values(broker, topic: str, expected: int) -> list[str]:
    """Every committed value of `topic` (which the connector creates on its first write)."""
    wait_for(lambda: http_request("GET", f"{broker.admin_url}/v1/topics/{topic}", timeout=5)[0] == 200, f"topic {topic}")
    recs = cf_consume(broker, topic, expected, conf=COMMITTED, timeout=30)
    return sorted(r.value.decode() for r in recs)


# --------------------------------------------------------------------------------------------------------
# Conformance: paths, shapes and status codes
# --------------------------------------------------------------------------------------------------------


def test_root_lists_and_a_fresh_broker_lists_the_first_party_connectors(broker):
    status, root, _ = rest(broker, "GET", "/")
    assert status == 200 and set(root) == {"version", "commit", "kafka_cluster_id"}, root
    assert rest(broker, "GET", "/connectors")[:2] == (200, [])
    status, plugins, _ = rest(broker, "GET", "/connector-plugins")
    assert status == 200, plugins
    assert {(p["class"], p["type"]) for p in plugins} == {
        ("file-source", "source"), ("file-sink", "sink"), ("jdbc-source", "source"), ("jdbc-sink", "sink"),
        ("postgres-cdc", "source")}, plugins
    assert all(p["version"] for p in plugins), plugins
    everything = rest(broker, "GET", "/connector-plugins?connectorsOnly=false")[1]
    transforms = {p["class"] for p in everything if p["type"] == "transformation"}
    assert {"pii-mask", "json-filter", "router", "json-to-msgpack"} <= transforms, everything
    status, keys, _ = rest(broker, "GET", "/connector-plugins/jdbc-source/config")
    assert status == 200 and {"mode", "incrementing.column.name", "table.whitelist"} <= {k["name"] for k in keys}, keys
    assert rest(broker, "GET", "/connectors?expand=status")[:2] == (200, {})


def test_create_info_config_status_tasks_and_expand_have_connects_shapes(connect_broker):
    b = connect_broker
    topic = unique("numbers")
    config = counter_config(topic, tasks_max=2, counter_max=10)
    config["connection.url"] = "sqlite::memory:"
    config["connection.password"] = "hunter2"
    info, headers = create(b, "numbers", config)
    assert headers.get("location", "").endswith("/connectors/numbers"), headers
    assert set(info) == {"name", "config", "tasks", "type"}
    assert info["name"] == "numbers" and info["type"] == "source"
    assert info["tasks"] == [{"connector": "numbers", "task": 0}, {"connector": "numbers", "task": 1}]
    assert info["config"]["name"] == "numbers", "the name is put into the config, as Connect does"
    assert info["config"]["connection.password"] == "********", "passwords are masked"

    assert rest(b, "GET", "/connectors")[:2] == (200, ["numbers"])
    status, again, _ = rest(b, "GET", "/connectors/numbers")
    assert status == 200 and again == info
    status, shown, _ = rest(b, "GET", "/connectors/numbers/config")
    assert status == 200 and shown == info["config"]

    wait_for(lambda: task_states(b, "numbers") == ["RUNNING", "RUNNING"], "both tasks RUNNING")
    st = state(b, "numbers")
    assert set(st) == {"name", "connector", "tasks", "type"}
    assert st["connector"]["state"] == "RUNNING" and st["connector"]["worker_id"]
    assert [set(t) >= {"id", "state", "worker_id"} for t in st["tasks"]] == [True, True]
    assert "trace" not in st["connector"], "trace only when FAILED"

    status, tasks, _ = rest(b, "GET", "/connectors/numbers/tasks")
    assert status == 200 and [t["id"] for t in tasks] == [{"connector": "numbers", "task": 0}, {"connector": "numbers", "task": 1}]
    assert tasks[0]["config"]["connection.password"] == "********"
    status, one, _ = rest(b, "GET", "/connectors/numbers/tasks/1/status")
    assert status == 200 and one["id"] == 1 and one["state"] == "RUNNING"
    assert_connect_error(rest(b, "GET", "/connectors/numbers/tasks/7/status"), 404)

    status, expanded, _ = rest(b, "GET", "/connectors?expand=status&expand=info")
    assert status == 200 and set(expanded["numbers"]) == {"status", "info"}
    assert expanded["numbers"]["info"] == info and expanded["numbers"]["status"]["name"] == "numbers"
    status, only_info, _ = rest(b, "GET", "/connectors?expand=info")
    assert set(only_info["numbers"]) == {"info"}

    assert values(b, topic, 20) == sorted(f"{t}:{n}" for t in range(2) for n in range(10))
    # The password stays in the broker's data directory, readable by the broker's user only.
    stored = b.data_dir / "__connect" / "connectors" / "numbers.json"
    assert json.loads(stored.read_text())["config"]["connection.password"] == "hunter2"
    assert oct(stored.parent.stat().st_mode & 0o777) == "0o700"


def test_errors_have_connects_shape_and_status_codes(connect_broker):
    b = connect_broker
    assert_connect_error(rest(b, "GET", "/connectors/nope"), 404, "Connector nope not found")
    for method, path in [("GET", "/status"), ("GET", "/config"), ("PUT", "/pause"), ("PUT", "/resume"), ("PUT", "/stop"),
                         ("POST", "/restart"), ("DELETE", ""), ("GET", "/offsets"), ("GET", "/tasks")]:
        assert_connect_error(rest(b, method, f"/connectors/nope{path}"), 404)
    create(b, "dup", counter_config(unique("t"), counter_max=1))
    assert_connect_error(rest(b, "POST", "/connectors", {"name": "dup", "config": counter_config("t")}), 409, "already exists")

    bad = counter_config("t", tasks_max=0)
    bad["counter.mxa"] = "1"
    assert_connect_error(rest(b, "POST", "/connectors", {"name": "bad", "config": bad}), 400,
                         "Connector configuration is invalid and contains the following 2 error(s)")
    assert_connect_error(rest(b, "POST", "/connectors", {"name": "x", "config": {"connector.class": "com.example.NoSuchConnector"}}),
                         400, "Failed to find any class")
    # A Java class name that is an alias of a first-party connector is validated by that connector's keys.
    assert_connect_error(rest(b, "POST", "/connectors", {"name": "x", "config": {"connector.class": "io.confluent.connect.jdbc.JdbcSourceConnector"}}),
                         400, 'Missing required configuration "mode"')
    assert_connect_error(rest(b, "POST", "/connectors", {"name": "x"}), 400, "config")
    assert_connect_error(rest(b, "PUT", "/connectors/x/config", {"name": "y", **counter_config("t")}), 400,
                         "doesn't match connector name in the URL")
    status, _, raw = http_request("POST", f"{b.admin_url}/connectors", body=b"{not json", timeout=10)
    assert status == 400 and json.loads(raw)["error_code"] == 400
    assert_connect_error(rest(b, "GET", "/connectors/dup/bogus"), 404)
    assert_connect_error(rest(b, "DELETE", "/connectors"), 405)
    assert_connect_error(rest(b, "POST", "/connectors/dup/restart?includeTasks=maybe"), 400, "includeTasks")
    assert rest(b, "GET", "/connectors")[:2] == (200, ["dup"]), "refused requests changed nothing"


def test_pause_resume_stop_restart_and_delete_answer_as_connect_does(connect_broker):
    b = connect_broker
    create(b, "life", counter_config(unique("t"), tasks_max=2, counter_interval_ms=20))
    wait_for(lambda: task_states(b, "life") == ["RUNNING", "RUNNING"], "RUNNING")
    assert rest(b, "PUT", "/connectors/life/pause")[0] == 202
    assert state(b, "life")["connector"]["state"] == "PAUSED" and task_states(b, "life") == ["PAUSED", "PAUSED"]
    assert rest(b, "PUT", "/connectors/life/pause")[0] == 202, "idempotent"
    assert rest(b, "PUT", "/connectors/life/resume")[0] == 202
    wait_for(lambda: task_states(b, "life") == ["RUNNING", "RUNNING"], "RUNNING again")

    status, body, _ = rest(b, "POST", "/connectors/life/restart")
    assert (status, body) == (204, None), "a plain restart answers 204 with no body"
    status, restarting, _ = rest(b, "POST", "/connectors/life/restart?includeTasks=true&onlyFailed=false")
    assert status == 202
    assert restarting["connector"]["state"] == "RESTARTING" and [t["state"] for t in restarting["tasks"]] == ["RESTARTING"] * 2
    wait_for(lambda: task_states(b, "life") == ["RUNNING", "RUNNING"], "RUNNING after the restart")
    status, only_failed, _ = rest(b, "POST", "/connectors/life/restart?includeTasks=true&onlyFailed=true")
    assert status == 202 and [t["state"] for t in only_failed["tasks"]] == ["RUNNING", "RUNNING"], "nothing failed, nothing restarts"

    assert rest(b, "PUT", "/connectors/life/stop")[:2] == (204, None)
    st = state(b, "life")
    assert st["connector"]["state"] == "STOPPED" and st["tasks"] == []
    assert rest(b, "GET", "/connectors/life")[1]["tasks"] == []
    assert rest(b, "PUT", "/connectors/life/stop")[0] == 204, "idempotent"
    assert rest(b, "PUT", "/connectors/life/resume")[0] == 202
    wait_for(lambda: task_states(b, "life") == ["RUNNING", "RUNNING"], "a resumed stopped connector runs")
    assert rest(b, "DELETE", "/connectors/life")[:2] == (204, None)
    assert rest(b, "GET", "/connectors")[1] == []


def test_offsets_follow_kip_875(connect_broker):
    b = connect_broker
    topic = unique("t")
    create(b, "pos", counter_config(topic, counter_max=15))
    values(b, topic, 15)
    saved = {"offsets": [{"partition": {"task": 0}, "offset": {"next": 15}}]}
    wait_for(lambda: rest(b, "GET", "/connectors/pos/offsets")[:2] == (200, saved), "the position after the last batch")
    rewind = {"offsets": [{"partition": {"task": 0}, "offset": {"next": 10}}]}
    assert_connect_error(rest(b, "PATCH", "/connectors/pos/offsets", rewind), 400, "STOPPED state")
    assert_connect_error(rest(b, "DELETE", "/connectors/pos/offsets"), 400, "STOPPED state")
    assert rest(b, "PUT", "/connectors/pos/stop")[0] == 204
    assert_connect_error(rest(b, "PATCH", "/connectors/pos/offsets", {"offsets": []}), 400,
                         "Partitions / offsets need to be provided for an alter offsets request")
    status, body, _ = rest(b, "PATCH", "/connectors/pos/offsets", rewind)
    assert status == 200 and set(body) == {"message"} and "altered successfully" in body["message"]
    assert rest(b, "GET", "/connectors/pos/offsets")[1] == rewind
    assert rest(b, "PUT", "/connectors/pos/resume")[0] == 202
    # The task resumes from the altered position: 10..14 are written again.
    assert values(b, topic, 20).count("0:12") == 2
    assert rest(b, "PUT", "/connectors/pos/stop")[0] == 204
    status, body, _ = rest(b, "DELETE", "/connectors/pos/offsets")
    assert status == 200 and "reset successfully" in body["message"]
    assert rest(b, "GET", "/connectors/pos/offsets")[1] == {"offsets": []}


def test_put_config_creates_then_reconfigures_and_masked_secrets_round_trip(connect_broker):
    b = connect_broker
    topic = unique("t")
    config = counter_config(topic, counter_max=5)
    config["connection.url"] = "sqlite::memory:"
    config["connection.password"] = "hunter2"
    status, info, headers = rest(b, "PUT", "/connectors/cfg/config", config)
    assert status == 201 and info["name"] == "cfg" and headers.get("location", "").endswith("/connectors/cfg")
    shown = rest(b, "GET", "/connectors/cfg/config")[1]
    shown["tasks.max"] = "2"
    status, info, _ = rest(b, "PUT", "/connectors/cfg/config", shown)
    assert status == 200 and info["config"]["tasks.max"] == "2" and len(info["tasks"]) == 2
    stored = json.loads((b.data_dir / "__connect" / "connectors" / "cfg.json").read_text())
    assert stored["config"]["connection.password"] == "hunter2", "a masked value sent back keeps the stored secret"


def test_validate_answers_with_config_infos_and_refuses_unknown_keys(connect_broker):
    b = connect_broker
    config = counter_config("t", tasks_max="zero")
    config["name"] = "v"
    config["counter.mxa"] = "1"
    config["connection.password"] = "pw"
    config["connection.url"] = "sqlite::memory:"
    status, result, _ = rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", config)
    assert status == 200
    assert set(result) == {"name", "error_count", "groups", "configs"} and result["name"] == COUNTER
    assert result["error_count"] == 2
    assert "Common" in result["groups"] and "Error Handling" in result["groups"]
    by_name = {c["value"]["name"]: c for c in result["configs"]}
    for entry in result["configs"]:
        assert set(entry) == {"definition", "value"}
        assert set(entry["definition"]) == {"name", "type", "required", "default_value", "importance", "documentation", "group",
                                            "order", "width", "display_name", "dependents"}
        assert set(entry["value"]) == {"name", "value", "recommended_values", "errors", "visible"}
    assert "Unknown configuration key" in by_name["counter.mxa"]["value"]["errors"][0]
    assert by_name["tasks.max"]["value"]["errors"], by_name["tasks.max"]
    assert by_name["connection.password"]["value"]["value"] == "[hidden]"
    assert by_name["topic"]["value"]["errors"] == [] and by_name["topic"]["definition"]["required"] is True
    assert by_name["errors.tolerance"]["value"]["recommended_values"] == ["none", "all"]

    good = {**counter_config("t"), "name": "v"}
    assert rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", good)[1]["error_count"] == 0
    assert rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", counter_config("t"))[1]["error_count"] == 1, "name is required"
    assert_connect_error(rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", {**good, "connector.class": "other"}), 400,
                         "does not match request type")
    assert_connect_error(rest(b, "PUT", "/connector-plugins/no-such-connector/config/validate", {}), 400, "Failed to find any class")
    status, keys, _ = rest(b, "GET", f"/connector-plugins/{COUNTER}/config")
    assert status == 200 and "topic" in [k["name"] for k in keys]
    assert_connect_error(rest(b, "GET", "/connector-plugins/nope/config"), 404)
    status, plugins, _ = rest(b, "GET", "/connector-plugins")
    assert status == 200 and {"class": COUNTER, "type": "source", "version": plugins[0]["version"]} in plugins


# --------------------------------------------------------------------------------------------------------
# Failures are visible; connectors survive crashes
# --------------------------------------------------------------------------------------------------------


def test_a_failed_task_shows_failed_with_its_trace_a_metric_and_a_log_line(connect_broker):
    b = connect_broker
    topic = unique("t")
    create(b, "breaks", counter_config(topic, counter_fail_at=7))
    st = wait_for(lambda: (s := state(b, "breaks"))["tasks"][0]["state"] == "FAILED" and s, "FAILED")
    assert "counter.fail.at=7" in st["tasks"][0]["trace"]
    assert st["connector"]["state"] == "RUNNING"
    status, _, raw = http_request("GET", f"{b.admin_url}/metrics")
    metrics = raw.decode()
    assert re.search(r'sluice_connector_tasks\{connector="breaks",state="FAILED"\} 1', metrics), metrics[-2000:]
    assert re.search(r'sluice_connector_errors_total\{connector="breaks",kind="task_failed"\} [1-9]', metrics)
    wait_for(lambda: "task failed" in b.log_path.read_text() and "breaks" in b.log_path.read_text(), "a log line")
    assert values(b, topic, 7) == [f"0:{n}" for n in range(7)], "what came before the failure is there"
    status, restarted, _ = rest(b, "POST", "/connectors/breaks/restart?includeTasks=true&onlyFailed=true")
    assert status == 202 and restarted["tasks"][0]["state"] == "RESTARTING"


def test_connectors_come_back_after_kill_9_in_their_target_state(connect_broker):
    b = connect_broker
    topic = unique("t")
    create(b, "runs", counter_config(topic, counter_max=50, counter_interval_ms=5))
    create(b, "waits", counter_config(unique("t")), initial_state="PAUSED")
    create(b, "halted", counter_config(unique("t")), initial_state="STOPPED")
    wait_for(lambda: task_states(b, "runs") == ["RUNNING"], "RUNNING")
    time.sleep(0.2)
    b.kill9()
    b.start()
    assert rest(b, "GET", "/connectors")[1] == ["halted", "runs", "waits"]
    assert state(b, "waits")["connector"]["state"] == "PAUSED"
    assert state(b, "halted")["connector"]["state"] == "STOPPED"
    wait_for(lambda: task_states(b, "runs") == ["RUNNING"], "RUNNING after the crash")
    # Every number arrives exactly once: a batch and its positions commit in one transaction, so the
    # kill neither loses nor repeats one.
    got = wait_for(lambda: (v := values(b, topic, 50)) and set(v) == {f"0:{n}" for n in range(50)} and v, "all 50 numbers", timeout=60)
    assert sorted(got) == sorted(f"0:{n}" for n in range(50)), "no number repeated"


# --------------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------------


def test_connector_commands_print_tables_json_and_exit_codes(connect_broker, tmp_path):
    b = connect_broker
    topic = unique("t")
    spec = tmp_path / "counter.json"
    spec.write_text(json.dumps({"name": "cli", "config": counter_config(topic, counter_max=20)}))
    out = sluice(b, "connector", "create", "cli", "--file", str(spec), "--config", "tasks.max=2").stdout
    assert "Created source connector cli (RUNNING, 2 task(s))" in out
    listed = sluice(b, "connector", "list").stdout
    assert re.search(r"^cli\s+source\s+RUNNING\s+[0-2]/2\s+test-counter-source$", listed, re.M), listed
    wait_for(lambda: "2/2" in sluice(b, "connector", "list").stdout, "2/2 tasks RUNNING")
    status = sluice(b, "connector", "status", "cli").stdout
    assert "Connector cli (source): RUNNING" in status and re.search(r"^0\s+RUNNING", status, re.M), status
    assert json.loads(sluice(b, "connector", "status", "cli", "--json").stdout)["connector"]["state"] == "RUNNING"
    config = sluice(b, "connector", "config", "cli", "--set", "counter.batch=2", "--unset", "counter.max").stdout
    assert "Reconfigured connector cli" in config and re.search(r"^counter.batch\s+2$", config, re.M)
    assert "counter.max" not in json.loads(sluice(b, "connector", "config", "cli", "--json").stdout)
    assert sluice(b, "connector", "pause", "cli").stdout.strip() == "Paused connector cli."
    assert json.loads(sluice(b, "connector", "status", "cli", "--json").stdout)["connector"]["state"] == "PAUSED"
    sluice(b, "connector", "resume", "cli")
    assert "Stopped connector cli." in sluice(b, "connector", "stop", "cli").stdout
    offsets = json.loads(sluice(b, "connector", "offsets", "cli", "--json").stdout)
    assert {e["partition"]["task"] for e in offsets["offsets"]} <= {0, 1}
    new = json.dumps({"offsets": [{"partition": {"task": 0}, "offset": {"next": 3}}]})
    assert "altered successfully" in sluice(b, "connector", "offsets", "cli", "--set", new).stdout
    assert "reset successfully" in sluice(b, "connector", "offsets", "cli", "--reset").stdout
    restart = json.loads(sluice(b, "connector", "restart", "cli", "--include-tasks", "--json").stdout)
    assert restart["connector"]["state"] == "STOPPED", "restarting a stopped connector changes nothing"
    assert sluice(b, "connector", "delete", "cli").stdout.strip() == "Deleted connector cli (its positions are kept)."

    missing = sluice(b, "connector", "status", "cli", check=False)
    assert missing.returncode == 1 and "Connector cli not found" in missing.stderr
    bad = sluice(b, "connector", "create", "x", "--config", "connector.class=nope", check=False)
    assert bad.returncode == 1 and "Failed to find any class" in bad.stderr
    assert sluice(b, "connector", "create", "x", check=False).returncode == 2
    assert sluice(b, "connector", "offsets", "x", "--set", "not json", check=False).returncode == 2
    unreachable = subprocess.run([str(require_binary()), "connector", "list", "--admin-url", "http://127.0.0.1:9"],
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 3, unreachable.stderr


def test_plugin_upload_then_list_and_the_transform_is_usable_in_a_connector_chain(connect_broker):
    b = connect_broker
    target = REPO_ROOT / "target" / "wasm-guests"
    subprocess.run(["cargo", "build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir", str(target), "-p", "identity"],
                   cwd=REPO_ROOT, check=True, timeout=1200)
    module = target / "wasm32-wasip2" / "wasm-guest" / "identity.wasm"
    out = sluice(b, "plugin", "upload", str(module), "--name", "identity", timeout=180).stdout
    assert out.startswith("Uploaded identity (") and "transform" in out
    listed = sluice(b, "plugin", "list").stdout
    assert re.search(r"^identity\s+transform\s+\d+ KiB\s+[0-9a-f]{12}\s+no$", listed, re.M), listed
    assert re.search(rf"^{COUNTER}\s+source\s+-\s+-\s+yes$", listed, re.M), listed
    assert re.search(r"^jdbc-sink\s+sink\s+\d+ KiB\s+[0-9a-f]{12}\s+yes$", listed, re.M), listed
    as_json = json.loads(sluice(b, "plugin", "list", "--json").stdout)
    uploaded = [m["name"] for m in as_json["modules"] if not m["builtin"]]
    assert uploaded == ["identity"], as_json
    everything = rest(b, "GET", "/connector-plugins?connectorsOnly=false")[1]
    assert any(p["class"] == "identity" and p["type"] == "transformation" for p in everything), everything
    assert all(p["class"] != "identity" for p in rest(b, "GET", "/connector-plugins")[1]), "transforms only with connectorsOnly=false"
    chained = counter_config("t", name="c", transforms="copy", **{"transforms.copy.type": "identity"})
    assert rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", chained)[1]["error_count"] == 0
    java_smt = counter_config("t", name="c", transforms="r", **{"transforms.r.type": "org.apache.kafka.connect.transforms.RegexRouter"})
    assert rest(b, "PUT", f"/connector-plugins/{COUNTER}/config/validate", java_smt)[1]["error_count"] == 1
    bad = sluice(b, "plugin", "upload", str(Path(__file__)), "--name", "not-wasm", check=False)
    assert bad.returncode == 1 and "HTTP 400" in bad.stderr
    # A connector loads its chain's modules by name whenever a task starts: the module cannot be
    # deleted from under it (409, naming the connector), and can once the connector is gone.
    create(b, "c", chained)
    refused = sluice(b, "plugin", "delete", "identity", check=False)
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr and "connector 'c'" in refused.stderr, refused.stderr
    assert rest(b, "DELETE", "/connectors/c")[0] == 204
    assert sluice(b, "plugin", "delete", "identity").stdout.strip() == "Deleted module name identity."
    assert "identity" not in [m["name"] for m in json.loads(sluice(b, "plugin", "list", "--json").stdout)["modules"]]
