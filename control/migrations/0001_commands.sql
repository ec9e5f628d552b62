-- Command downlink: the durable queue and history (issue 21).
-- Times are Unix milliseconds (bigint) so every relay agrees without time zone rules.

-- Drones that ever registered on a relay with a database: "unknown drone" means not in here.
CREATE TABLE drones (
    id            text PRIMARY KEY,
    relay_id      text NOT NULL,
    last_seen_ms  bigint NOT NULL
);

CREATE TABLE commands (
    id               text PRIMARY KEY,            -- 32 lowercase hex
    drone_id         text NOT NULL,
    type             text NOT NULL,
    payload          bytea NOT NULL,              -- JSON, UTF-8
    deadline_ms      bigint NOT NULL,
    status           text NOT NULL,               -- queued delivered running succeeded failed expired cancelled
    submitted_by     text NOT NULL,
    idempotency_key  text,
    body_hash        text NOT NULL,               -- sha256 of (drone, type, payload, deadline)
    created_ms       bigint NOT NULL,
    delivered_ms     bigint,
    accepted_ms      bigint,
    finished_ms      bigint,
    exit_code        integer,
    message          text,
    relay_id         text,                        -- relay that last delivered it
    output_bytes     bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX commands_idempotency_key ON commands (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_drone_created ON commands (drone_id, created_ms DESC);
-- The pending-command query on Register and the deadline sweep read only open commands.
CREATE INDEX commands_open ON commands (drone_id)
    WHERE status IN ('queued', 'delivered', 'running');
CREATE INDEX commands_open_deadline ON commands (deadline_ms)
    WHERE status IN ('queued', 'delivered');

-- Output chunks, stored idempotently: a chunk resent after a reconnect is stored once.
CREATE TABLE command_output (
    command_id  text NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    stream      smallint NOT NULL,                -- 0 stdout, 1 stderr
    byte_offset bigint NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (command_id, stream, byte_offset)
);
