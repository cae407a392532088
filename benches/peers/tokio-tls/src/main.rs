//! The chat of mio-chat over wss://, written the idiomatic async way: tokio's multi-threaded
//! runtime, tokio-rustls (ring provider, like mio-chat) and tokio-tungstenite, one task per
//! connection reading and a `broadcast` channel fanning messages out. Same JSON, same join and
//! leave notices; `/echo` sends every message back, outside the room. Only here to be measured beside mio-chat (benches/tls.sh): idle memory per
//! wss:// connection.
//!
//! Usage: tokio-tls-peer ADDR CERT.pem KEY.pem [READ_BUFFER]
//!
//! READ_BUFFER sets tungstenite's per-connection read buffer (default 128 KiB, allocated when
//! the connection opens): the one knob that changes this peer's idle memory most.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn frame(body: &str) -> String {
    let escaped: String = body
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("{{\"type\":1,\"body\":\"{escaped}\"}}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, cert, key, read_buffer) = match &args[..] {
        [_, addr, cert, key] => (addr, cert, key, None),
        [_, addr, cert, key, size] => (addr, cert, key, Some(size.parse::<usize>()?)),
        _ => return Err("usage: tokio-tls-peer ADDR CERT.pem KEY.pem [READ_BUFFER]".into()),
    };
    let ws_config = read_buffer.map(|n| WebSocketConfig::default().read_buffer_size(n));
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    // Room for a whole join flood of 10,000 without a receiver lagging.
    let (room, _) = broadcast::channel::<Arc<str>>(16 * 1024);
    loop {
        let (socket, _) = listener.accept().await?;
        let (acceptor, room) = (acceptor.clone(), room.clone());
        tokio::spawn(async move {
            let _ = serve(socket, acceptor, room, ws_config).await;
        });
    }
}

async fn serve(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    room: broadcast::Sender<Arc<str>>,
    ws_config: Option<WebSocketConfig>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    socket.set_nodelay(true)?;
    let tls = acceptor.accept(socket).await?;
    let mut echo = false;
    let callback = |request: &Request, response| {
        echo = request.uri().path() == "/echo";
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, callback, ws_config).await?;
    let (mut sink, mut stream) = ws.split();
    if echo {
        // Like mio-chat's --echo: every message back, outside the room.
        while let Some(Ok(message)) = stream.next().await {
            if message.is_text() && sink.send(message).await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    let mut inbox = room.subscribe();
    let _ = room.send(frame("New User Joined...").into());
    // One task writes what the room says; this one reads what the client says.
    let writer = tokio::spawn(async move {
        loop {
            let text = match inbox.recv().await {
                Ok(text) => text,
                Err(broadcast::error::RecvError::Lagged(_)) => continue, // too slow: skipped
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if sink.send(Message::text(&*text)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                let _ = room.send(frame(text.as_str()).into());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    writer.abort();
    let _ = room.send(frame("User Disconnected...").into());
    Ok(())
}
