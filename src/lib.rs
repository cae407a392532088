//! mio-chat: a WebSocket chat server in one thread, on one hand-rolled `mio` event loop.
//!
//! Every text message a client sends goes to every client, in one order for all; everyone is
//! told when someone joins or leaves.
//!
//! **Where to start reading:** `docs/tour.md`, the one guided tour. It gives a first-read path
//! of about 700 lines in order, a diagram of one turn of the loop and one of a message's life,
//! and chains of calls that answer the questions a first reader asks. `tests/it/readme_tour.rs`
//! checks every chain against this code. Its entry point here is [`reactor`] ([`Server::run`]).
//!
//! **Three layers:** the loop ([`reactor`]: the poll, the clients' slab, the work lists, every
//! socket), the room without I/O ([`room_core`]: events in, the turn's batch out), and one client
//! as a state machine over bytes ([`connection`]). Between a socket and its connection sits the
//! [`transport`] (plaintext or TLS).
//!
//! **Where the I/O is:** the sockets are read and written in [`reactor`] (the listener, client
//! sockets, signals), [`transport`] (client bytes, plaintext or through rustls; its [`client`
//! side](transport::client) for `rediss://`) and [`backplane`] (the Redis sockets, and resolving
//! Redis's name). [`transport::server_config`] reads the certificate files; [`metrics`] reads
//! `/proc/self` at a scrape and the certificate's expiry when it is loaded; [`logging`] writes to
//! stderr. The other modules are logic over bytes and values, testable without a socket:
//! [`room_core`], [`connection`], [`http`], [`frame`], [`presence`], [`room`], [`message`],
//! [`pacing`], [`queue`], [`timers`], [`budget`], [`config`], [`proxy`], [`redis`] (the RESP
//! codec; the URL and TLS settings in [`redis::url`]), [`envelope`] and [`nonblocking`] (what
//! every non-blocking read and write shares).

pub mod backplane;
pub mod budget;
pub mod config;
pub mod connection;
pub mod envelope;
pub mod frame;
pub mod http;
pub mod logging;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod nonblocking;
pub mod pacing;
pub mod presence;
pub mod proxy;
pub mod queue;
pub mod reactor;
pub mod redis;
pub mod room;
pub mod room_core;
pub mod timers;
pub mod transport;

pub use config::Config;
pub use reactor::{Server, StopHandle};
