"""Wasm transforms end to end: the examples and first-party plugins are built to `.wasm` components with
cargo, deployed to a real broker through `sluice transform deploy`, fed with a real Kafka client, and
their output topics read back with a read_committed consumer. Also: a kill -9 of the broker mid-stream
(exactly once, per-key order), hostile modules beside a well-behaved one, the error policies, limits
changed without a restart, pause/resume, redeploy, restart survival, and `transform init` + `build`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import sluice_cli as sluice, REPO_ROOT, cf_consume, cf_produce, cf_producer, create_topic, require_binary, unique, wait_for

GUEST_DIR = REPO_ROOT / "target" / "wasm-guests" / "wasm32-wasip2" / "wasm-guest"
GUESTS = ["identity", "json-filter", "pii-mask", "router", "json-to-msgpack", "fixture-hostile", "fixture-wrong-world", "fixture-bulky"]
COMMITTED = {"isolation.level": "read_committed"}


@pytest.fixture(scope="session")
def guests() -> Path:
    """Builds the guest components once per session (cargo makes it a no-op when they are current)."""
    cmd = ["cargo", "build", "--profile", "wasm-guest", "--target", "wasm32-wasip2", "--target-dir", str(REPO_ROOT / "target" / "wasm-guests")]
    for g in GUESTS:
        cmd += ["-p", g]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, timeout=1200)
    return GUEST_DIR


def wasm(guests: Path, name: str) -> Path:
    path = guests / f"{name.replace('-', '_')}.wasm"
    assert path.exists(), f"{path} was not built"
    return path


def status(broker, name: str) -> dict:
    return json.loads(sluice(broker, "transform", "status", name, "--json").stdout)


def deploy(broker, guests, module: str, name: str, inp: str, outs: list[str], *extra: str) -> dict:
    args = ["transform", "deploy", str(wasm(guests, module)), "--name", name, "--input-topic", inp]
    for o in outs:
        args += ["--output-topic", o]
    sluice(broker, *args, *extra)
    return status(broker, name)


def test_identity_copies_every_record_with_key_headers_and_order(broker, guests):
    src, dst = unique("id-in"), unique("id-out")
    create_topic(broker, src, partitions=3)
    create_topic(broker, dst, partitions=3)
    records = [{"key": f"k{i % 7}".encode(), "value": f"v{i}".encode(), "headers": [("h", b"1")]} for i in range(300)]
    cf_produce(cf_producer(broker), src, records)
    st = deploy(broker, guests, "identity", "copy", src, [dst])
    assert st["state"] == "running" and st["version"] == 1
    assert st["boundary"] == "one_buffer", "the SDK's transforms take each batch as one buffer"
    out = cf_consume(broker, dst, expected=300, conf=COMMITTED)
    assert sorted(r.value for r in out) == sorted(r["value"] for r in records)
    assert all(r.headers == (("h", b"1"),) for r in out)
    by_key: dict[bytes, list[int]] = {}
    for r in out:
        by_key.setdefault(r.key, []).append(int(r.value[1:]))
    assert all(v == sorted(v) for v in by_key.values()), "per-key order must hold"
    st = wait_for(lambda: (s := status(broker, "copy"))["records_in"] == 300 and s, "records_in == 300")
    assert st["lag"] == 0 and st["records_out"] == 300
    listed = json.loads(sluice(broker, "transform", "list", "--json").stdout)
    assert [t["name"] for t in listed] == ["copy"]
    text = sluice(broker, "transform", "status", "copy").stdout
    assert "running" in text and src in text


def test_a_module_built_with_the_first_sdk_runs_per_record_exactly_once_and_status_says_to_rebuild(broker):
    # No batch export (built before `batch-transformer`): the runner's batches reach it as records.
    module = REPO_ROOT / "platform" / "wasm" / "fixtures" / "prebuilt" / "identity-first-sdk.wasm"
    src, dst = unique("old-in"), unique("old-out")
    create_topic(broker, src, partitions=2)
    create_topic(broker, dst, partitions=2)
    records = [{"key": f"k{i % 5}".encode(), "value": f"v{i}".encode(), "headers": [("h", b"x")]} for i in range(200)]
    cf_produce(cf_producer(broker), src, records)
    sluice(broker, "transform", "deploy", str(module), "--name", "old", "--input-topic", src, "--output-topic", dst)
    out = cf_consume(broker, dst, expected=200, conf=COMMITTED)
    assert sorted(r.value for r in out) == sorted(r["value"] for r in records), "each record exactly once"
    assert all(r.headers == (("h", b"x"),) for r in out)
    st = wait_for(lambda: (s := status(broker, "old"))["records_out"] == 200 and s, "records_out == 200")
    assert st["boundary"] == "per_record", st
    text = sluice(broker, "transform", "status", "old").stdout
    assert "Boundary:    per record" in text and "rebuild" in text, text


def test_plugins_filter_mask_route_and_convert(broker, guests):
    import msgpack

    src = unique("orders")
    big, masked, eu, us, other, packed = (unique(p) for p in ("big", "masked", "eu", "us", "other", "packed"))
    for t in (src, big, masked, eu, us, other, packed):
        create_topic(broker, t)
    orders = [{"id": i, "status": "shipped" if i % 2 else "new", "region": ["eu", "us", "apac"][i % 3], "email": f"u{i}@x.io"} for i in range(30)]
    cf_produce(cf_producer(broker), src, [{"key": str(o["id"]).encode(), "value": json.dumps(o).encode()} for o in orders])
    deploy(broker, guests, "json-filter", "only-shipped", src, [big], "--config", "field=status", "--config", 'equals="shipped"')
    deploy(broker, guests, "pii-mask", "mask", src, [masked], "--config", "fields=email")
    deploy(broker, guests, "router", "route", src, [other, eu, us], "--config", "field=region", "--config", f"routes=eu:{eu},us:{us}")
    deploy(broker, guests, "json-to-msgpack", "pack", src, [packed])

    shipped = [json.loads(r.value) for r in cf_consume(broker, big, expected=15, conf=COMMITTED)]
    assert sorted(o["id"] for o in shipped) == [o["id"] for o in orders if o["status"] == "shipped"]
    masked_out = [json.loads(r.value) for r in cf_consume(broker, masked, expected=30, conf=COMMITTED)]
    assert len(masked_out) == 30 and all(o["email"] == "***" for o in masked_out)
    assert sorted(json.loads(r.value)["id"] for r in cf_consume(broker, eu, expected=10, conf=COMMITTED)) == [o["id"] for o in orders if o["region"] == "eu"]
    assert len(cf_consume(broker, us, expected=10, conf=COMMITTED)) == 10
    assert len(cf_consume(broker, other, expected=10, conf=COMMITTED)) == 10, "unmatched records go to the first output"
    packed_out = cf_consume(broker, packed, expected=30, conf=COMMITTED)
    decoded = sorted((msgpack.unpackb(r.value) for r in packed_out), key=lambda o: o["id"])
    assert decoded == orders
    assert all(dict(r.headers).get("content-type") == b"application/msgpack" for r in packed_out)


def test_bad_deploys_are_refused_with_a_clear_message(broker, guests, tmp_path):
    src, dst = unique("in"), unique("out")
    create_topic(broker, src)
    create_topic(broker, dst)
    garbage = tmp_path / "garbage.wasm"
    garbage.write_bytes(os.urandom(4096))
    cases = [
        (["transform", "deploy", str(garbage), "--name", "g", "--input-topic", src, "--output-topic", dst], "invalid module"),
        (["transform", "deploy", str(wasm(guests, "fixture-wrong-world")), "--name", "w", "--input-topic", src, "--output-topic", dst], "wrong world"),
        (["transform", "deploy", str(wasm(guests, "json-filter")), "--name", "f", "--input-topic", src, "--output-topic", dst], "field"),
        (["transform", "deploy", str(wasm(guests, "identity")), "--name", "x", "--input-topic", "nope", "--output-topic", dst], "does not exist"),
        (["transform", "deploy", str(wasm(guests, "identity")), "--name", "bad/name", "--input-topic", src, "--output-topic", dst], "name"),
        (["transform", "status", "never-deployed"], "no transform"),
    ]
    for args, expected in cases:
        proc = sluice(broker, *args, check=False)
        assert proc.returncode == 1, f"{args}: exit {proc.returncode}, stderr {proc.stderr}"
        assert expected in proc.stderr.lower(), f"{args}: {proc.stderr}"
    proc = sluice(broker, "transform", "deploy", str(garbage), "--name", "g", "--input-topic", src, "--output-topic", dst, "--error-policy", "sometimes", check=False)
    assert proc.returncode == 2
    assert json.loads(sluice(broker, "transform", "list", "--json").stdout) == []


def test_hostile_modules_are_stopped_and_a_good_transform_keeps_running(broker, guests):
    src, good_out = unique("in"), unique("good")
    create_topic(broker, src, partitions=2)
    create_topic(broker, good_out, partitions=2)
    deploy(broker, guests, "identity", "good", src, [good_out])
    modes = {"loop": "cpu limit", "memory-bomb": "memory limit", "panic": "trapped", "guest-error": "transform error", "oversized-record": "over the broker's limit"}
    for mode in modes:
        out = unique(f"bad-{mode}")
        create_topic(broker, out)
        memory = "16" if mode == "memory-bomb" else "64"
        # The CPU bound is wall time between epoch ticks: only the loop gets a short one, so that a
        # loaded machine cannot turn the others' real failures into timeouts.
        cpu_ms = "300" if mode == "loop" else "5000"
        deploy(broker, guests, "fixture-hostile", f"bad-{mode}", src, [out], "--config", f"mode={mode}", "--cpu-ms-per-call", cpu_ms, "--memory-mb", memory)
    cf_produce(cf_producer(broker), src, [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(50)])
    for mode, expected in modes.items():
        st = wait_for(lambda: (s := status(broker, f"bad-{mode}"))["state"] == "failed" and s, f"bad-{mode} to fail", timeout=60)
        assert expected in st["error"].lower(), f"{mode}: {st['error']}"
        assert st["records_out"] == 0
    assert len(cf_consume(broker, good_out, expected=50, conf=COMMITTED)) == 50
    health = json.loads(sluice(broker, "cluster", "info", "--json").stdout)
    assert health["admin"]["reachable"]
    metrics = subprocess.run(["curl", "-s", f"{broker.admin_url}/metrics"], capture_output=True, text=True, timeout=10).stdout
    assert 'sluice_transform_errors_total{kind="cpu_timeout",transform="bad-loop"}' in metrics


def test_dead_letter_policy_sends_the_failing_batch_with_the_error_and_goes_on(broker, guests):
    src, out, dlq = unique("in"), unique("out"), unique("dlq")
    for t in (src, out, dlq):
        create_topic(broker, t)
    deploy(broker, guests, "json-filter", "strict", src, [out], "--config", "field=ok", "--config", "on-invalid=fail", "--error-policy", f"dead-letter:{dlq}", "--batch-records", "1")
    cf_produce(cf_producer(broker), src, [{"value": b'{"ok": 1}'}, {"value": b"not json"}, {"value": b'{"ok": 2}'}])
    assert len(cf_consume(broker, out, expected=2, conf=COMMITTED)) == 2
    dead = cf_consume(broker, dlq, expected=1, conf=COMMITTED)
    assert [r.value for r in dead] == [b"not json"]
    headers = dict(dead[0].headers)
    assert b"json" in headers["sluice.error"].lower() and headers["sluice.source.offset"] == b"1" and headers["sluice.transform"] == b"strict"
    st = status(broker, "strict")
    assert st["state"] == "running" and st["dead_lettered"] == 1


def test_a_decompression_bomb_in_the_input_is_dead_lettered_and_the_rest_flows_on(broker, guests):
    """Issue 10, item 11: a gzip batch of 80 MiB of zeros (about 80 KB on the wire, within max.message.bytes)
    is not decompressed past the reader's 64 MiB bound, nor retried for ever: with a dead-letter policy the
    runner records it in the dead-letter topic (its offset and the offset after it, and the reason) and goes
    on with the next batch."""
    src, out, dlq = unique("in"), unique("out"), unique("dlq")
    for t in (src, out, dlq):
        create_topic(broker, t)
    deploy(broker, guests, "identity", "bombed", src, [out], "--error-policy", f"dead-letter:{dlq}")
    bomb = cf_producer(broker, {"compression.type": "gzip", "message.max.bytes": 200_000_000, "batch.size": 200_000_000})
    cf_produce(bomb, src, [{"value": bytes(80 * 2**20)}])
    cf_produce(cf_producer(broker), src, [{"value": b"after the bomb"}])
    assert [r.value for r in cf_consume(broker, out, expected=1, conf=COMMITTED)] == [b"after the bomb"]
    dead = cf_consume(broker, dlq, expected=1, conf=COMMITTED)
    assert len(dead) == 1 and not dead[0].value, "the dead letter describes the batch; it does not carry 80 MiB"
    headers = dict(dead[0].headers)
    assert headers["sluice.source.offset"] == b"0" and headers["sluice.source.next_offset"] == b"1", headers
    assert b"cannot be decoded" in headers["sluice.error"], headers["sluice.error"]
    assert status(broker, "bombed")["state"] == "running"


def test_limits_change_without_restart_and_pause_resume_redeploy(broker, guests):
    src, out = unique("in"), unique("out")
    create_topic(broker, src)
    create_topic(broker, out)
    deploy(broker, guests, "fixture-hostile", "bomb", src, [out], "--config", "mode=memory-bomb", "--memory-mb", "8")
    cf_produce(cf_producer(broker), src, [{"value": b"x"}])
    wait_for(lambda: status(broker, "bomb")["state"] == "failed", "bomb to fail")
    st = json.loads(sluice(broker, "transform", "set-limits", "bomb", "--memory-mb", "4", "--cpu-ms-per-call", "100", "--json").stdout)
    assert (st["memory_bytes"], st["cpu_ms_per_call"]) == (4 << 20, 100)
    # Redeploy a fixed module under the same name: it resumes at the failed record, exactly once.
    st = deploy(broker, guests, "identity", "bomb", src, [out])
    assert st["version"] == 2
    assert [r.value for r in cf_consume(broker, out, expected=1, conf=COMMITTED)] == [b"x"]
    sluice(broker, "transform", "pause", "bomb")
    assert status(broker, "bomb")["state"] == "paused"
    cf_produce(cf_producer(broker), src, [{"value": b"y"}])
    time.sleep(1.0)
    assert status(broker, "bomb")["records_in"] == 1, "a paused transform reads nothing"
    sluice(broker, "transform", "resume", "bomb")
    assert sorted(r.value for r in cf_consume(broker, out, expected=2, conf=COMMITTED)) == [b"x", b"y"]
    sluice(broker, "transform", "delete", "bomb")
    assert json.loads(sluice(broker, "transform", "list", "--json").stdout) == []


@pytest.mark.timeout(300)
def test_kill9_mid_stream_leaves_each_result_exactly_once_in_key_order(broker, guests):
    src, out = unique("eos-in"), unique("eos-out")
    create_topic(broker, src, partitions=2)
    create_topic(broker, out, partitions=2)
    deploy(broker, guests, "identity", "eos", src, [out], "--batch-records", "50")
    producer = cf_producer(broker, {"enable.idempotence": True})
    sent = []
    for round_ in range(4):
        batch = [{"key": f"k{i % 10}".encode(), "value": f"{round_:02d}-{i:05d}".encode()} for i in range(3000)]
        cf_produce(producer, src, batch)
        sent += [r["value"] for r in batch]
        time.sleep(0.3)
        broker.kill9()
        broker.start()
        producer = cf_producer(broker, {"enable.idempotence": True})
    wait_for(lambda: status(broker, "eos")["lag"] == 0 and status(broker, "eos")["state"] == "running", "the transform to catch up", timeout=120)
    out_recs = cf_consume(broker, out, expected=len(sent), conf=COMMITTED, timeout=60, settle=2.0)
    values = [r.value for r in out_recs]
    assert len(values) == len(set(values)), f"{len(values) - len(set(values))} duplicates after kill -9"
    assert sorted(values) == sorted(sent)
    by_key: dict[bytes, list[bytes]] = {}
    for r in out_recs:
        by_key.setdefault(r.key, []).append(r.value)
    assert all(v == sorted(v) for v in by_key.values()), "per-key order must hold across crashes"


def test_transforms_survive_a_restart_without_recompiling(broker, guests):
    src, out = unique("in"), unique("out")
    create_topic(broker, src)
    create_topic(broker, out)
    deploy(broker, guests, "identity", "durable", src, [out])
    cf_produce(cf_producer(broker), src, [{"value": b"before"}])
    assert len(cf_consume(broker, out, expected=1, conf=COMMITTED)) == 1
    broker.restart()
    st = status(broker, "durable")
    assert st["state"] == "running" and st["version"] == 1
    assert "cache_hit=true" in broker.log_tail(200).replace(" ", "")
    cf_produce(cf_producer(broker), src, [{"value": b"after"}])
    assert sorted(r.value for r in cf_consume(broker, out, expected=2, conf=COMMITTED)) == [b"after", b"before"]


@pytest.mark.timeout(900)
def test_init_scaffolds_a_crate_that_builds_and_deploys(broker, tmp_path):
    # Regression: `init` wrote the SDK dependency as the absolute path of the source tree the binary was
    # built from, so a binary installed anywhere else scaffolded a crate that could not build. Here a copy
    # of the binary runs from another directory with its own XDG_DATA_HOME: the SDK must come out of the
    # binary, unpacked there, with nothing pointing back into this checkout.
    installed = tmp_path / "bin" / "sluice"
    installed.parent.mkdir()
    shutil.copy2(require_binary(), installed)
    data_home = tmp_path / "xdg-data"
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_SDK_PATH"}
    env.update(XDG_DATA_HOME=str(data_home), NO_COLOR="1")

    def init(name: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(installed), "transform", "init", name, "--dir", str(tmp_path / name)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc

    proc = init("shout")
    assert "cargo test" in proc.stdout
    manifest = (tmp_path / "shout" / "Cargo.toml").read_text()
    assert str(REPO_ROOT) not in manifest, manifest
    [sdk_dir] = list((data_home / "sluice" / "sdk").iterdir())
    assert f'sluice = {{ path = "{sdk_dir / "sluice"}" }}' in manifest, manifest
    for path in sdk_dir.rglob("*"):
        if path.is_file():
            assert str(REPO_ROOT) not in path.read_text(errors="replace"), path
    # A second crate reuses the unpacked SDK.
    init("whisper")
    assert list((data_home / "sluice" / "sdk").iterdir()) == [sdk_dir]

    target = REPO_ROOT / "target" / "wasm-guests"
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    subprocess.run(["cargo", "test", "-q"], cwd=tmp_path / "shout", check=True, timeout=600, env=env)
    built = subprocess.run([str(installed), "transform", "build", str(tmp_path / "shout"), "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert built.returncode == 0, built.stderr
    module = json.loads(built.stdout)["module"]
    src, out = unique("in"), unique("out")
    create_topic(broker, src)
    create_topic(broker, out)
    sluice(broker, "transform", "deploy", module, "--name", "shout", "--input-topic", src, "--output-topic", out)
    cf_produce(cf_producer(broker), src, [{"value": b"hello"}])
    assert [r.value for r in cf_consume(broker, out, expected=1, conf=COMMITTED)] == [b"HELLO"]


def test_from_latest_is_pinned_at_deploy_and_survives_a_crash(broker, guests):
    src, out = unique("in"), unique("out")
    create_topic(broker, src)
    create_topic(broker, out)
    cf_produce(cf_producer(broker), src, [{"value": f"old-{i}".encode()} for i in range(5)])
    deploy(broker, guests, "identity", "tail", src, [out], "--from", "latest")
    sluice(broker, "transform", "pause", "tail")
    wait_for(lambda: status(broker, "tail")["partitions"][0]["position"] == 5, "the start position to be pinned")
    cf_produce(cf_producer(broker), src, [{"value": f"new-{i}".encode()} for i in range(3)])
    broker.kill9()
    broker.start()
    assert status(broker, "tail")["state"] == "paused", "pause survives a restart"
    sluice(broker, "transform", "resume", "tail")
    out_values = sorted(r.value for r in cf_consume(broker, out, expected=3, conf=COMMITTED))
    assert out_values == [b"new-0", b"new-1", b"new-2"], "records that arrived after the deploy are not skipped, old ones not read"


def test_a_cold_deploy_serves_on_baseline_code_and_moves_to_optimized_code_exactly_once(broker, guests):
    """Tiered compilation: `fixture-bulky` (2 MB of code; Cranelift needs seconds for it) serves from
    Winch's code right after the deploy, its runner moves to Cranelift's code between batches while
    records keep arriving, and every input record comes out exactly once. A second deployment of the
    same module starts on the cached optimized code, and both tiers computed the same output."""
    src, dst, again = unique("tier-in"), unique("tier-out"), unique("tier-again")
    for t in (src, dst, again):
        create_topic(broker, t)
    producer = cf_producer(broker)
    sent = 0

    def produce(n: int) -> None:
        nonlocal sent
        cf_produce(producer, src, [{"key": f"k{i % 5}".encode(), "value": f"v{i}".encode()} for i in range(sent, sent + n)])
        sent += n

    produce(500)
    st = deploy(broker, guests, "fixture-bulky", "bulky", src, [dst])
    assert st["code"] == "baseline", st
    assert "Code:        baseline" in sluice(broker, "transform", "status", "bulky").stdout

    def optimized() -> bool:
        produce(50)
        return status(broker, "bulky")["code"] == "optimized"

    wait_for(optimized, "the optimized code to be ready", timeout=120)
    produce(500)
    out = cf_consume(broker, dst, expected=sent, conf=COMMITTED)
    assert sorted(int(r.value[1:]) for r in out) == list(range(sent)), "every record exactly once across the switch"
    assert "moving to the optimized code" in Path(broker.log_path).read_text(errors="replace"), "the runner switched code between batches"

    st = deploy(broker, guests, "fixture-bulky", "bulky-again", src, [again])
    assert st["code"] == "optimized", "the second deploy starts on the cached optimized code"
    redo = cf_consume(broker, again, expected=sent, conf=COMMITTED)
    hashes = lambda records: sorted((r.value, r.headers) for r in records)  # noqa: E731
    assert hashes(redo) == hashes(out), "baseline and optimized code computed the same output"
