"""Just enough of the Kafka wire format, by hand, to send requests no client library would send.

Frames are `int32 length` + request header + body. Requests here use non-flexible versions (header v1: api key,
api version, correlation id, client id) except where noted. Record batches are v2 with a CRC-32C computed by
the pure-Python `crc32c` below, so a test can build valid batches as well as broken ones.
"""

from __future__ import annotations

import socket
import struct
import time

# --- CRC-32C (Castagnoli), reflected polynomial 0x82F63B78 -----------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value

# --- primitives -------------------------------------------------------------------------------------------


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    return i32(-1) if b is None else i32(len(b)) + b


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint(v: int) -> bytes:
    """Zig-zag signed varint (also used for varlongs)."""
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


# --- record batch v2 -------------------------------------------------------------------------------------


def record(offset_delta: int, key: bytes | None, value: bytes | None, headers=(), timestamp_delta: int = 0) -> bytes:
    body = i8(0) + varint(timestamp_delta) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(len(headers))
    for hk, hv in headers:
        hkb = hk if isinstance(hk, bytes) else hk.encode()  # bytes: a key that need not be UTF-8
        body += varint(len(hkb)) + hkb + (varint(-1) if hv is None else varint(len(hv)) + hv)
    return varint(len(body)) + body


def record_batch(records, base_timestamp: int | None = None, corrupt_crc: bool = False,
                 producer: tuple[int, int, int] | None = None, transactional: bool = False) -> bytes:
    """An uncompressed v2 batch of (key, value, headers) triples; `producer` is (id, epoch, base
    sequence) of an idempotent or (with `transactional`) transactional producer."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    recs = b"".join(record(i, k, v, h) for i, (k, v, h) in enumerate(records))
    producer_id, producer_epoch, base_sequence = producer or (-1, -1, -1)
    after_crc = (
        i16(0x10 if transactional else 0)  # attributes: no compression, CreateTime, not control
        + i32(len(records) - 1)  # last offset delta
        + i64(ts)  # base timestamp
        + i64(ts)  # max timestamp
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + recs
    )
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0x5A5A5A5A
    after_length = i32(-1) + i8(2) + u32(crc) + after_crc  # partition leader epoch, magic, crc
    return i64(0) + i32(len(after_length)) + after_length


# --- requests --------------------------------------------------------------------------------------------

PRODUCE = 0
METADATA = 3
API_VERSIONS = 18
UNSUPPORTED_VERSION = 35
CORRUPT_MESSAGE = 2


def frame(api_key: int, api_version: int, correlation_id: int, body: bytes, client_id: str = "sluice-raw",
          flexible_header: bool = False) -> bytes:
    header = i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)
    if flexible_header:
        header += uvarint(0)  # no tagged fields
    payload = header + body
    return i32(len(payload)) + payload


def api_versions_v0(correlation_id: int) -> bytes:
    return frame(API_VERSIONS, 0, correlation_id, b"")


def api_versions_v3(correlation_id: int) -> bytes:
    body = compact_string("sluice-raw") + compact_string("1.0") + uvarint(0)
    return frame(API_VERSIONS, 3, correlation_id, body, flexible_header=True)


def produce_v3(correlation_id: int, topic: str, partition: int, batch: bytes, acks: int = 1,
               timeout_ms: int = 10_000, transactional_id: str | None = None) -> bytes:
    body = (
        string(transactional_id)
        + i16(acks)
        + i32(timeout_ms)
        + i32(1) + string(topic)
        + i32(1) + i32(partition) + nbytes(batch)
    )
    return frame(PRODUCE, 3, correlation_id, body)


def metadata_v2(correlation_id: int, topics: list[str]) -> bytes:
    body = i32(len(topics)) + b"".join(string(t) for t in topics)
    return frame(METADATA, 2, correlation_id, body)


# --- responses -------------------------------------------------------------------------------------------


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self) -> int:
        return self.take(">h")

    def i32(self) -> int:
        return self.take(">i")

    def i64(self) -> int:
        return self.take(">q")

    def string(self) -> str:
        n = self.i16()
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(correlation id, body) of the next response frame (response header v0)."""
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    assert 4 <= size < 100 * 1024 * 1024, f"response size {size}"
    payload = recv_exact(sock, size)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


def parse_api_versions(body: bytes, flexible: bool = False) -> tuple[int, dict[int, tuple[int, int]]]:
    r = Reader(body)
    error = r.i16()
    n = r.uvarint() - 1 if flexible else r.i32()
    apis = {}
    for _ in range(max(n, 0)):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        if flexible:
            r.uvarint()  # tagged fields of the entry (assumed empty)
        apis[key] = (lo, hi)
    return error, apis


def parse_produce_v3(body: bytes) -> list[tuple[str, int, int, int]]:
    """[(topic, partition, error code, base offset)] of a Produce v3 response."""
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition, error, base_offset = r.i32(), r.i16(), r.i64()
            r.i64()  # log append time
            out.append((topic, partition, error, base_offset))
    return out


def parse_metadata_v2(body: bytes) -> dict:
    """{"brokers": {id: (host, port)}, "cluster_id", "controller_id",
    "topics": {name: (error, {partition: (error, leader, replicas, isr)})}} of a Metadata v2 response."""
    r = Reader(body)

    def nullable_string():
        n = struct.unpack_from(">h", r.data, r.pos)[0]
        if n < 0:
            r.pos += 2
            return None
        return r.string()

    def int_array():
        return [r.i32() for _ in range(r.i32())]

    brokers = {}
    for _ in range(r.i32()):
        node, host, port = r.i32(), r.string(), r.i32()
        nullable_string()  # rack
        brokers[node] = (host, port)
    cluster_id, controller_id = nullable_string(), r.i32()
    topics = {}
    for _ in range(r.i32()):
        error, name = r.i16(), r.string()
        r.take(">?")  # is_internal
        parts = {}
        for _ in range(r.i32()):
            p_error, index, leader = r.i16(), r.i32(), r.i32()
            parts[index] = (p_error, leader, int_array(), int_array())
        topics[name] = (error, parts)
    return {"brokers": brokers, "cluster_id": cluster_id, "controller_id": controller_id, "topics": topics}


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Read and discard until the peer closes (True) or `timeout` passes with the connection open (False)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (socket.timeout, TimeoutError):
        return False
