//! The ext_proc shim: the same executor and the same policies as the Wasm
//! filter, out of Envoy's process, behind Envoy's `ext_proc` filter.
//!
//! Like the Wasm host it only translates: `ProcessingRequest` messages
//! become executor phases ([`stream`]), outcomes become `HeadersResponse`,
//! `BodyResponse` or `ImmediateResponse` messages ([`translate`]). What the
//! Wasm host saves by not making host calls, this one saves by asking Envoy
//! (`mode_override`) to send only what the matched chain needs: no body for
//! a headers-only chain, no response at all for a chain that does not act on
//! it.
//!
//! A policy that calls a service (or needs a fresher remote document) holds
//! its stream's answer until the call is answered; the call goes out
//! asynchronously ([`callout`]), and no thread blocks on it.
//!
//! The configuration is the Wasm filter's plugin configuration, read from a
//! file and reloaded when it changes ([`store`]); a bad new file is refused
//! with the same errors and the previous configuration keeps serving.
//!
//! This crate is a library: the builder (`filter/builder`) generates the
//! `policy-extproc` binary for each build, whose `main` calls [`cli::main`]
//! with the build's policies.

pub mod callout;
pub mod cli;
pub mod decisions;
pub mod fetch;
pub mod prometheus;
pub mod service;
pub mod store;
pub mod stream;
pub mod tls;
pub mod translate;
