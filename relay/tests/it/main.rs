//! The relay's integration tests, one binary (each module was its own binary before: folding
//! them links the world once instead of twenty times). Support modules first, then one module
//! per area.

mod commands_support;
mod common;
mod faults_support;
mod sink_support;

mod acked_written;
mod acks;
mod all_outputs;
mod backpressure;
mod commands;
mod drain;
mod failures;
mod faults_cut;
mod faults_hostile;
mod faults_kill;
mod faults_link;
mod faults_redis;
mod faults_spool;
mod fleet;
mod ingest;
mod live;
mod mavlink_relay;
mod placement;
mod rejections;
mod security;
mod sink_jetstream;
mod sink_outage;
mod sink_redis_streams;
mod sre;
mod sre_commands;
mod sre_grpc;
mod sre_page;
mod structure;
mod tls_resume;
mod usage_restart;
