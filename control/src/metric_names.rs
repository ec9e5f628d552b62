//! Every Prometheus metric name Contrail exports, in one place: the relay and this crate both
//! emit through these constants, and [`ALL`] is what the relay's `metric_names` test checks
//! against `/metrics` and CONTRACTS.md. Labels never carry agent ids.

// Lifecycle and fleet (this crate).
/// Gauge 0/1: the relay accepts sessions.
pub const READY: &str = "contrail_ready";
/// Gauge 0/1: the relay is draining.
pub const DRAINING: &str = "contrail_draining";
/// Gauge: registered sessions (from the fleet; the relay does not set it).
pub const SESSIONS_ACTIVE: &str = "contrail_sessions_active";
/// Routing changes dropped because the routing queue was full.
pub const ROUTING_EVENTS_DROPPED: &str = "contrail_routing_events_dropped_total";
/// `{child}`: control-root children restarted after a failure.
pub const CONTROL_RESTARTS: &str = "contrail_control_restarts_total";
/// Redis routing publications that failed.
pub const REDIS_PUBLISH_ERRORS: &str = "contrail_redis_publish_errors_total";
/// Redis commands sent by the routing publisher.
pub const REDIS_COMMANDS: &str = "contrail_redis_commands_total";
/// Gauge 0/1: the routing publisher holds a Redis connection.
pub const REDIS_CONNECTED: &str = "contrail_redis_connected";
/// Histogram: age of frames when the relay read them (sane agent clocks only).
pub const FRAME_AGE: &str = "contrail_frame_age_seconds";
/// Histogram: from receiving a frame to every required sink having accepted it.
pub const COMMIT_LATENCY: &str = "contrail_commit_latency_seconds";
/// Histogram: from receiving a frame to sending its ack.
pub const ACK_LATENCY: &str = "contrail_ack_latency_seconds";
/// Histogram `{sink}`: one sink write.
pub const SINK_WRITE_LATENCY: &str = "contrail_sink_write_latency_seconds";

// Sessions (relay).
/// Sessions registered.
pub const SESSIONS_OPENED: &str = "contrail_sessions_opened_total";
/// `{code}`: registrations refused.
pub const SESSIONS_REJECTED: &str = "contrail_sessions_rejected_total";
/// Sessions closed because the same agent registered again.
pub const SESSIONS_SUPERSEDED: &str = "contrail_sessions_superseded_total";
/// Session tasks or actors that panicked (closed with INTERNAL).
pub const SESSION_PANICS: &str = "contrail_session_panics_total";
/// Registrations refused with INTERNAL: the session supervisor did not answer the claim.
pub const CLAIM_FAILURES: &str = "contrail_claim_failures_total";
/// QUIC/TLS handshakes that failed before a session could start.
pub const HANDSHAKE_FAILURES: &str = "contrail_handshake_failures_total";
/// `{reason}`: failed agent authentications.
pub const AUTH_FAILURES: &str = "contrail_auth_failures_total";
/// `{result=resumed|refused}`: TLS session tickets.
pub const TLS_TICKETS: &str = "contrail_tls_tickets_total";
/// `{code}`: sessions ended by a protocol error.
pub const PROTOCOL_ERRORS: &str = "contrail_protocol_errors_total";
/// `{limit}`: a configured limit was hit.
pub const LIMIT_HITS: &str = "contrail_limit_hits_total";
/// Resume cursors evicted (table full or idle past the TTL).
pub const RESUME_EVICTED: &str = "contrail_resume_evicted_total";
/// `{child}`: relay-root children (session supervisor, sink actors) that failed.
pub const RELAY_CHILD_FAILURES: &str = "contrail_relay_child_failures_total";

// Data path (relay).
/// Telemetry frames read.
pub const FRAMES_RECEIVED: &str = "contrail_frames_received_total";
/// Telemetry bytes read.
pub const BYTES_RECEIVED: &str = "contrail_bytes_received_total";
/// Frames at or below the forwarded seq (resends after a resume).
pub const FRAMES_DUPLICATE: &str = "contrail_frames_duplicate_total";
/// Frames discarded after a quota nack until the agent resends.
pub const FRAMES_DISCARDED: &str = "contrail_frames_discarded_total";
/// `{trigger=window|delay|pace|drain}`: acks sent.
pub const ACKS_SENT: &str = "contrail_acks_sent_total";
/// `{status}`: nacks sent.
pub const NACKS_SENT: &str = "contrail_nacks_sent_total";
/// Batches that used the agent's last credit.
pub const CREDITS_EXHAUSTED: &str = "contrail_credits_exhausted_total";

// Sinks (relay).
/// `{sink}`: frames a sink accepted.
pub const SINK_ACCEPTED: &str = "contrail_sink_accepted_total";
/// `{sink,reason}`: frames a sink dropped.
pub const SINK_DROPPED: &str = "contrail_sink_dropped_total";
/// Gauge `{sink}`: batches queued.
pub const SINK_QUEUE_DEPTH: &str = "contrail_sink_queue_depth";
/// `{sink}`: failed writes.
pub const SINK_ERRORS: &str = "contrail_sink_errors_total";
/// Gauge `{sink}` 0/1: the sink's last write succeeded.
pub const SINK_HEALTHY: &str = "contrail_sink_healthy";
/// `{sink}`: sink worker restarts (a worker died).
pub const SINK_RESTARTS: &str = "contrail_sink_restarts_total";
/// `{sink}`: batches a restarted worker wrote again (its predecessor held them when it died).
pub const SINK_REDELIVERED: &str = "contrail_sink_redelivered_batches_total";
/// File sink rotations.
pub const FILE_ROTATIONS: &str = "contrail_file_rotations_total";
/// Gauge: live subscribers connected.
pub const SUBSCRIBERS_ACTIVE: &str = "contrail_subscribers_active";
/// Frames a live subscriber's queue dropped.
pub const SUBSCRIBER_DROPPED: &str = "contrail_subscriber_dropped_total";
/// `{reason}`: live subscribers refused.
pub const SUBSCRIBERS_REJECTED: &str = "contrail_subscribers_rejected_total";

/// Every name above.
// Downlink, MAVLink, placement, registry (emitted by their modules).
/// `{code}`: command API requests refused (docs/downlink.md).
pub const COMMAND_API_ERRORS_TOTAL: &str = "contrail_command_api_errors_total";
/// Histogram: command submit to result stored.
pub const COMMAND_COMPLETION_SECONDS: &str = "contrail_command_completion_seconds";
/// Histogram: command submit to agent accepted.
pub const COMMAND_DELIVERY_SECONDS: &str = "contrail_command_delivery_seconds";
/// The PostgreSQL LISTEN connection was re-established.
pub const COMMAND_LISTENER_RECONNECTS_TOTAL: &str = "contrail_command_listener_reconnects_total";
/// Command output chunks received (stored idempotently).
pub const COMMAND_OUTPUT_CHUNKS_TOTAL: &str = "contrail_command_output_chunks_total";
/// Histogram: how long a command waited queued before delivery.
pub const COMMAND_QUEUE_AGE_SECONDS: &str = "contrail_command_queue_age_seconds";
/// `{status,type}`: command state changes.
pub const COMMANDS_TOTAL: &str = "contrail_commands_total";
/// `{reason}`: frames whose agent clock was not sane (not in the frame-age histogram).
pub const FRAME_AGE_SKIPPED_TOTAL: &str = "contrail_frame_age_skipped_total";
/// `{output,reason}`: MAVLink payloads written raw because they did not decode.
pub const MAVLINK_DECODE_FAILURES_TOTAL: &str = "contrail_mavlink_decode_failures_total";
/// `{output}`: MAVLink payloads decoded into a JSON output.
pub const MAVLINK_DECODED_TOTAL: &str = "contrail_mavlink_decoded_total";
/// `{reason}`: lab UDP endpoint datagrams or systems dropped.
pub const MAVLINK_UDP_DROPPED_TOTAL: &str = "contrail_mavlink_udp_dropped_total";
/// Lab UDP endpoint: packets lost (MAVLink sequence gaps).
pub const MAVLINK_UDP_LOST_TOTAL: &str = "contrail_mavlink_udp_lost_total";
/// Lab UDP endpoint: MAVLink packets received.
pub const MAVLINK_UDP_PACKETS_TOTAL: &str = "contrail_mavlink_udp_packets_total";
/// Gauge: lab UDP endpoint systems (sessions) active.
pub const MAVLINK_UDP_SYSTEMS: &str = "contrail_mavlink_udp_systems";
/// `{reason}`: a redirect was due but no better relay existed (accepted here).
pub const REDIRECTS_NONE_TOTAL: &str = "contrail_redirects_none_total";
/// `{reason}`: agents redirected to another relay (placement).
pub const REDIRECTS_TOTAL: &str = "contrail_redirects_total";
/// Relay registry (relay:{id}) publish or read errors.
pub const REGISTRY_ERRORS_TOTAL: &str = "contrail_registry_errors_total";
/// Usage flushes to PostgreSQL that failed (the deltas are kept and retried).
pub const USAGE_FLUSH_ERRORS: &str = "contrail_usage_flush_errors_total";
/// Gauge: the UDP receive buffer the kernel granted the relay socket.
pub const UDP_RECV_BUFFER_BYTES: &str = "contrail_udp_recv_buffer_bytes";

/// Every name above.
pub const ALL: &[&str] = &[
    COMMAND_API_ERRORS_TOTAL,
    COMMAND_COMPLETION_SECONDS,
    COMMAND_DELIVERY_SECONDS,
    COMMAND_LISTENER_RECONNECTS_TOTAL,
    COMMAND_OUTPUT_CHUNKS_TOTAL,
    COMMAND_QUEUE_AGE_SECONDS,
    COMMANDS_TOTAL,
    FRAME_AGE_SKIPPED_TOTAL,
    MAVLINK_DECODE_FAILURES_TOTAL,
    MAVLINK_DECODED_TOTAL,
    MAVLINK_UDP_DROPPED_TOTAL,
    MAVLINK_UDP_LOST_TOTAL,
    MAVLINK_UDP_PACKETS_TOTAL,
    MAVLINK_UDP_SYSTEMS,
    REDIRECTS_NONE_TOTAL,
    REDIRECTS_TOTAL,
    REGISTRY_ERRORS_TOTAL,
    USAGE_FLUSH_ERRORS,
    UDP_RECV_BUFFER_BYTES,
    COMMIT_LATENCY,
    READY,
    DRAINING,
    SESSIONS_ACTIVE,
    ROUTING_EVENTS_DROPPED,
    CONTROL_RESTARTS,
    REDIS_PUBLISH_ERRORS,
    REDIS_COMMANDS,
    REDIS_CONNECTED,
    FRAME_AGE,
    ACK_LATENCY,
    SINK_WRITE_LATENCY,
    SESSIONS_OPENED,
    SESSIONS_REJECTED,
    SESSIONS_SUPERSEDED,
    SESSION_PANICS,
    CLAIM_FAILURES,
    HANDSHAKE_FAILURES,
    AUTH_FAILURES,
    TLS_TICKETS,
    PROTOCOL_ERRORS,
    LIMIT_HITS,
    RESUME_EVICTED,
    RELAY_CHILD_FAILURES,
    FRAMES_RECEIVED,
    BYTES_RECEIVED,
    FRAMES_DUPLICATE,
    FRAMES_DISCARDED,
    ACKS_SENT,
    NACKS_SENT,
    CREDITS_EXHAUSTED,
    SINK_ACCEPTED,
    SINK_DROPPED,
    SINK_QUEUE_DEPTH,
    SINK_ERRORS,
    SINK_HEALTHY,
    SINK_RESTARTS,
    SINK_REDELIVERED,
    FILE_ROTATIONS,
    SUBSCRIBERS_ACTIVE,
    SUBSCRIBER_DROPPED,
    SUBSCRIBERS_REJECTED,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let mut seen = std::collections::HashSet::new();
        for n in super::ALL {
            assert!(seen.insert(*n), "{n} listed twice");
            assert!(n.starts_with("contrail_"), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{n}");
        }
    }
}
