//! Axon's server-server side.
//!
//! Today: the server's ed25519 signing key (generated on first start, persisted by the
//! homeserver, used to sign every event it creates so that federation can accept them as
//! they are). To come with the federation milestone: X-Matrix request authentication,
//! transactions, join/leave/invite handshakes, backfill and the key server endpoints.
//!
//! **Architecture Invariant.** This crate calls the homeserver's services through traits it
//! defines; it never depends on `axon`'s HTTP layer, and the homeserver's services never
//! depend on it except for keys and signing.

pub mod keys;
