#!/usr/bin/env python3
"""Hand-encodes the Register exchange shown in docs/protocol.md (no protobuf library needed).

Each message is printed as it travels on the wire: a 4-byte BIG-ENDIAN length prefix (not a
varint), then the protobuf body. protocol/tests/wire_example.rs checks the same bytes against
the Rust (prost) encoding of contrail.proto.
"""
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire_type):
    return varint(field << 3 | wire_type)


def uint(field, v):  # proto3: a zero value is not encoded
    return key(field, 0) + varint(v) if v else b""


def ld(field, data):  # length-delimited: string, bytes, embedded message
    if isinstance(data, str):
        data = data.encode()
    return key(field, 2) + varint(len(data)) + data if data else b""


def framed(body):
    return struct.pack(">I", len(body)) + body  # 4-byte big-endian length prefix


def hexdump(b):
    return " ".join(f"{x:02x}" for x in b)


# ControlMessage oneof members: register = 1, registered = 2, error = 3, ack = 4.
register = (ld(1, "drone-1") + ld(2, "0.9.0") + ld(3, "linux-aarch64") + ld(4, "s3cret"))
resume_register = (ld(1, "drone-1") + ld(2, "0.9.0") + ld(3, "linux-aarch64") + ld(4, "s3cret")
                   + ld(5, uint(1, 41) + ld(2, "5f0c0e2b9a7d4c1e8b3a6f2d1c0e9b8a")))
registered = (ld(1, "5f0c0e2b9a7d4c1e8b3a6f2d1c0e9b8a") + ld(2, "relay-a") + uint(3, 1024)
              + uint(4, 5000) + uint(5, 0) + uint(6, 65536))
frame = (uint(1, 1) + uint(2, 1_795_448_993_227_000_000) + uint(3, 0) + uint(4, 33)
         + ld(5, "f-9") + ld(6, b"\x01\x02\x03\x04") + ld(7, ""))
ack = uint(1, 1)
error = uint(1, 2) + ld(2, "authentication failed")

MESSAGES = [
    ("agent -> relay, control stream: ControlMessage{register}", framed(ld(1, register))),
    ("relay -> agent, control stream: ControlMessage{registered}", framed(ld(2, registered))),
    ("agent -> relay, telemetry stream: TelemetryFrame (seq 1)", framed(frame)),
    ("relay -> agent, control stream: ControlMessage{ack}", framed(ld(4, ack))),
    ("relay -> agent, control stream: ControlMessage{error} (refused Register)",
     framed(ld(3, error))),
    ("agent -> relay, control stream: ControlMessage{register} resuming after seq 41",
     framed(ld(1, resume_register))),
]

if __name__ == "__main__":
    for title, data in MESSAGES:
        print(f"# {title}: {len(data)} bytes")
        print(hexdump(data))
