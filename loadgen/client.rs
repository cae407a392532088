//! One client as a state machine over its socket:
//!
//! ```text
//!  Connecting ──writable──▶ Handshake ──101──▶ Open ──our Close──▶ Closing ──their Close──▶ done
//! ```
//!
//! The fleet owns the sockets' readiness; a client is told what was read and says what happened
//! ([`Event`]s, or a [`Failure`] that ends it). It answers pings and the server's Close by itself,
//! so keepalive never drops an idle client during `--hold`.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};

use log::debug;
use mio::net::TcpStream;
use mio_chat::frame::OpCode;

use crate::chat::{body_of, envelope_inner, Notice};
use crate::handshake::{self, HandshakeError, Request};
use crate::target::Target;
use crate::tls::Session;
use crate::wire::{Fixed, Inbox, Incoming, Masks, WireError};
use mio_chat::frame::push_client_frame;

/// The largest message accepted from the server; the chat's own limit is 64 KiB of text,
/// which JSON escaping can at most sextuple.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `connect` is in progress.
    Connecting,
    /// The request is written (or being written); reading the response head.
    Handshake,
    Open,
    /// We sent Close and wait for the server's.
    Closing,
}

/// What a read brought.
#[derive(Debug)]
pub enum Event<'a> {
    /// The handshake is complete.
    Opened,
    /// A chat message: the `body` of `{"type":1,"body":...}`, never a notice's.
    Chat(&'a str),
    /// A chat message as it stands between the envelope's quotes: not unescaped yet (see
    /// [`crate::chat::unescape`]), and not a notice in its plain form.
    Envelope(&'a str),
    /// That many of one notice in a row (recognised by their bytes when they come in the
    /// server's usual frames, so the join flood is counted a run at a time, not decoded).
    Notice(Notice, u64),
    /// A text message that is not the chat's JSON envelope.
    NotChat(&'a str),
    /// A binary message of this many bytes (the chat never sends one).
    Binary(usize),
    /// The server answered our Close: the client is done, cleanly.
    Closed,
}

/// Why a client gave up. Grouped by [`Failure::label`] in the reports.
#[derive(Debug)]
pub enum Failure {
    Connect(io::Error),
    Handshake(HandshakeError),
    Protocol(WireError),
    /// The server closed the WebSocket (code, if any) when we had not asked.
    ServerClosed(Option<u16>),
    /// The server hung up without a closing handshake.
    Eof(Phase),
    Io(Phase, io::Error),
}

impl Failure {
    /// A short description that ignores per-connection details, so that failures group.
    pub fn label(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {}", e.kind()),
            Failure::Handshake(e) => format!("handshake: {e}"),
            Failure::Protocol(e) => format!("protocol: {e}"),
            Failure::ServerClosed(Some(code)) => format!("closed by the server ({code})"),
            Failure::ServerClosed(None) => "closed by the server".into(),
            Failure::Eof(phase) => format!("server hung up ({phase:?})"),
            Failure::Io(phase, e) => format!("{} ({phase:?})", e.kind()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Io(phase, e) => write!(f, "{e} ({phase:?})"),
            other => f.write_str(&other.label()),
        }
    }
}

pub struct Client {
    pub socket: TcpStream,
    /// With a `wss://` target: the TLS session the WebSocket bytes go through.
    tls: Option<Session>,
    /// Position in the dial order, 0-based.
    pub index: u32,
    phase: Phase,
    /// While handshaking: the accept key we expect, and the response head read so far.
    handshake: Option<(String, Vec<u8>)>,
    inbox: Inbox,
    /// Bytes to send; `out[sent..]` is what the socket has not taken yet.
    out: Vec<u8>,
    sent: usize,
    /// Listed for a flush at the end of the turn.
    pub dirty: bool,
}

impl Client {
    pub fn new(socket: TcpStream, index: u32) -> Self {
        Client {
            socket,
            tls: None,
            index,
            phase: Phase::Connecting,
            handshake: None,
            inbox: Inbox::new(MAX_MESSAGE),
            out: Vec::new(),
            sent: 0,
            dirty: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn has_output(&self) -> bool {
        self.sent < self.out.len() || self.tls.as_ref().is_some_and(Session::wants_write)
    }

    /// Like `socket.read` (`Ok(0)` at the end), through TLS for a `wss://` target. The upgrade
    /// request waits for the TLS handshake, and goes as soon as a read completes it.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.socket.read(buf);
        };
        let n = tls.read(&mut self.socket, buf)?;
        if self.has_output() && self.phase != Phase::Connecting {
            while self.has_output() && self.write_some()? > 0 {}
        }
        Ok(n)
    }

    /// One write of queued bytes; `Ok(0)` only through TLS, when nothing could be taken yet.
    fn write_some(&mut self) -> io::Result<usize> {
        let pending = &self.out[self.sent..];
        let n = match self.tls.as_mut() {
            None => self.socket.write(pending)?,
            Some(tls) => match tls.write(&mut self.socket, pending)? {
                0 => return Err(ErrorKind::WouldBlock.into()),
                n => n,
            },
        };
        self.sent += n;
        Ok(n)
    }

    /// Called on the first writable (or error) event: has `connect` finished? `Ok(false)` means
    /// not yet (a stale event, for instance one meant for an earlier client with this token).
    pub fn finish_connect(&mut self, target: &Target) -> Result<bool, Failure> {
        if let Some(e) = self.socket.take_error().map_err(Failure::Connect)? {
            return Err(Failure::Connect(e));
        }
        match self.socket.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(Failure::Connect(e)),
        }
        if let Some(secure) = &target.tls {
            let session = Session::new(&secure.config, secure.name.clone());
            self.tls = Some(session.map_err(Failure::Connect)?);
        }
        let Request { bytes, accept } = handshake::request(&target.host, &target.path);
        self.out.extend_from_slice(&bytes);
        self.handshake = Some((accept, Vec::new()));
        self.phase = Phase::Handshake;
        Ok(true)
    }

    /// Handles bytes read from the socket; `on` hears what they brought, in order. `notices`
    /// are [`crate::chat::notice_frames`].
    pub fn receive(
        &mut self,
        data: &[u8],
        notices: &Fixed,
        masks: &mut Masks,
        on: &mut dyn FnMut(Event),
    ) -> Result<(), Failure> {
        if let Some((accept, head)) = self.handshake.as_mut() {
            head.extend_from_slice(data);
            let Some(head_len) =
                handshake::check_response(head, accept).map_err(Failure::Handshake)?
            else {
                return Ok(());
            };
            let (_, head) = self.handshake.take().unwrap_or_default();
            self.phase = Phase::Open;
            on(Event::Opened);
            // Frames that came in the same read as the head.
            return self.receive_frames(&head[head_len..], notices, masks, on);
        }
        self.receive_frames(data, notices, masks, on)
    }

    fn receive_frames(
        &mut self,
        data: &[u8],
        notices: &Fixed,
        masks: &mut Masks,
        on: &mut dyn FnMut(Event),
    ) -> Result<(), Failure> {
        let Client {
            phase, inbox, out, ..
        } = self;
        let mut outcome = Ok(());
        let parsed = inbox.feed(data, notices, &mut |incoming| {
            if outcome.is_err() {
                return;
            }
            match incoming {
                Incoming::Repeated { index, count } => match Notice::of_fixed(index) {
                    Some(notice) => on(Event::Notice(notice, count as u64)),
                    None => on(Event::NotChat("")), // not one of ours: cannot happen
                },
                // Most texts are in the envelope as it is written: their body is left to the
                // observer, which may check it faster than unescaping could.
                Incoming::Text(json) => match envelope_inner(json) {
                    Some(inner) => match Notice::of_body(inner) {
                        Some(notice) => on(Event::Notice(notice, 1)),
                        None => on(Event::Envelope(inner)),
                    },
                    None => match body_of(json) {
                        Some(body) => match Notice::of_body(&body) {
                            Some(notice) => on(Event::Notice(notice, 1)),
                            None => on(Event::Chat(&body)),
                        },
                        None => on(Event::NotChat(json)),
                    },
                },
                Incoming::Binary(len) => on(Event::Binary(len)),
                Incoming::Ping(payload) => {
                    push_client_frame(out, OpCode::Pong, payload, masks.next_mask());
                }
                Incoming::Pong => {}
                Incoming::Close(code) if *phase == Phase::Closing => {
                    debug!("close answered with {code:?}");
                    on(Event::Closed);
                    // Anything after the server's Close is no concern of ours.
                    outcome = Err(None);
                }
                Incoming::Close(code) => {
                    // Answer, as the protocol asks, but the run has lost this client.
                    push_client_frame(out, OpCode::Close, &[], masks.next_mask());
                    outcome = Err(Some(Failure::ServerClosed(code)));
                }
            }
        });
        parsed.map_err(Failure::Protocol)?;
        match outcome {
            Ok(()) | Err(None) => Ok(()),
            Err(Some(failure)) => Err(failure),
        }
    }

    /// The server closed its side of the connection.
    pub fn eof(&self) -> Failure {
        Failure::Eof(self.phase)
    }

    pub fn send_text(&mut self, text: &str, masks: &mut Masks) {
        push_client_frame(
            &mut self.out,
            OpCode::Text,
            text.as_bytes(),
            masks.next_mask(),
        );
    }

    /// Starts the closing handshake (code 1000, normal closure).
    pub fn close(&mut self, masks: &mut Masks) {
        push_client_frame(
            &mut self.out,
            OpCode::Close,
            &1000u16.to_be_bytes(),
            masks.next_mask(),
        );
        self.phase = Phase::Closing;
    }

    /// Writes queued bytes until they are all sent or the socket is full.
    pub fn flush(&mut self) -> Result<(), Failure> {
        while self.has_output() && self.phase != Phase::Connecting {
            match self.write_some() {
                Ok(0) => return Err(Failure::Eof(self.phase)),
                Ok(_) => {}
                // Edge-triggered: the socket stays registered for WRITABLE, so an event
                // comes when there is room again.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(self.phase, e)),
            }
        }
        if !self.has_output() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }
}
