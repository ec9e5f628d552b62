//! contrail-agent end to end: a simulated vehicle (testsupport) talks MAVLink to the agent over
//! real sockets (UDP, a pty standing in for a serial port), the agent streams to an in-process
//! relay on loopback, and the relay writes an NDJSON file sink that the tests read back.

mod common;

mod binary;
mod commands;
mod commands_mavlink;
mod commands_support;
mod commands_update;
mod demo;
mod faults;
mod streams;
