//! mio-chat: a WebSocket chat server in one thread, on one hand-rolled `mio` event loop.
//!
//! Every text message a client sends goes to every client, in one order for all; everyone is
//! told when someone joins or leaves. A reading order for the code:
//!
//! 1. [`reactor`]: the event loop. Start here: it owns the sockets and shows the whole flow.
//! 2. [`connection`]: one client as a state machine over bytes (HTTP request → WebSocket → close).
//! 3. [`http`] and [`frame`]: parsing the request head and WebSocket frames, without I/O.
//! 4. [`room`] and [`message`]: who gets what, and the JSON every client receives.
//! 5. [`queue`], [`timers`], [`config`], [`budget`]: outbound bytes, deadlines, settings, a
//!    client's fair share of the room.
//! 6. [`metrics`] and [`logging`]: what an operator sees; [`proxy`]: who a client is behind a
//!    reverse proxy.
//! 7. [`transport`]: plaintext or TLS (rustls) between a socket and its connection.
//! 8. [`backplane`], with [`redis`] and [`envelope`]: several processes as one room, through
//!    Redis pub/sub (`--redis`).
//!
//! Everything but `reactor` is plain logic over bytes and can be tested without a socket.

pub mod backplane;
pub mod budget;
pub mod config;
pub mod connection;
pub mod envelope;
pub mod frame;
pub mod http;
pub mod logging;
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
pub mod timers;
pub mod transport;

pub use config::Config;
pub use reactor::{Server, StopHandle};
