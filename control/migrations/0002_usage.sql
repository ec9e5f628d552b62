-- Usage per agent in hourly buckets, shared by every relay (issue 22 item 4; docs/sre.md "Usage").
-- Each relay process adds its committed frames and bytes to its own row per (agent, hour);
-- GET /v1/usage sums the rows of every relay.
CREATE TABLE usage_hourly (
    agent_id    text NOT NULL,
    hour_ms     bigint NOT NULL,              -- start of the hour, Unix ms
    relay_id    text NOT NULL,
    frames      bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0,
    updated_ms  bigint NOT NULL,
    PRIMARY KEY (agent_id, hour_ms, relay_id)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour_ms);

-- One mark per relay process: the last flush applied. A flush advances it in the same
-- transaction as its rows, so a flush retried after a lost commit answer is applied once.
CREATE TABLE usage_flushes (
    relay_id     text NOT NULL,
    incarnation  text NOT NULL,               -- random per process start
    flush_seq    bigint NOT NULL,
    sampled_ms   bigint NOT NULL,             -- every frame this process committed before it is counted
    flushed_ms   bigint NOT NULL,
    PRIMARY KEY (relay_id, incarnation)
);
