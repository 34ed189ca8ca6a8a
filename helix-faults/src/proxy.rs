//! A TCP proxy in front of a MySQL/MariaDB server that counts the commands its clients send:
//! the round trips of one node, exactly, whatever else the server is serving.
//!
//! The server's global `Questions` counter counts every client of the server; on a shared
//! server it says little about one cluster. Giving each node process a proxy of its own (its
//! store URL points at the proxy, with `prefer_socket=false` so that the client does not move
//! to the server's Unix socket) counts that node's commands alone.
//!
//! In the MySQL client/server protocol every packet starts with a 3-byte little-endian payload
//! length and a 1-byte sequence id; a command from the client starts a new sequence at 0, and
//! its first payload byte is the command (`COM_QUERY` 0x03, `COM_STMT_PREPARE` 0x16,
//! `COM_STMT_EXECUTE` 0x17, `COM_STMT_CLOSE` 0x19, `COM_PING` 0x0e, …). The handshake's
//! packets from the client have sequence ids of 1 and more, so they are not counted. A payload
//! of 2²⁴ − 1 bytes or more is split into several packets; the continuation packets have
//! sequence ids above 0 and are not counted either. The proxy does not support TLS or
//! compression (the counts would be wrong), which the MySQL store does not use.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `COM_QUIT`: closes the connection, no answer.
const COM_QUIT: u8 = 0x01;
/// `COM_STMT_CLOSE`: frees a prepared statement, no answer.
const COM_STMT_CLOSE: u8 = 0x19;

/// How many commands of each kind the clients sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCounts {
    by_command: [u64; 256],
}

impl Default for CommandCounts {
    fn default() -> Self {
        Self { by_command: [0; 256] }
    }
}

impl CommandCounts {
    /// Commands of kind `command` (the first payload byte).
    pub fn of(&self, command: u8) -> u64 {
        self.by_command[usize::from(command)]
    }

    /// Every command.
    pub fn total(&self) -> u64 {
        self.by_command.iter().sum()
    }

    /// The commands the server answers, each one round trip: every command but
    /// `COM_STMT_CLOSE` and `COM_QUIT`.
    pub fn round_trips(&self) -> u64 {
        self.total() - self.of(COM_STMT_CLOSE) - self.of(COM_QUIT)
    }

    /// The counts gained since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let mut by_command = [0; 256];
        for (i, n) in by_command.iter_mut().enumerate() {
            *n = self.by_command[i].saturating_sub(earlier.by_command[i]);
        }
        Self { by_command }
    }

    /// The counts of `self` and `other` together.
    #[must_use]
    pub fn plus(&self, other: &Self) -> Self {
        let mut by_command = self.by_command;
        for (n, m) in by_command.iter_mut().zip(other.by_command.iter()) {
            *n += m;
        }
        Self { by_command }
    }

    /// The kinds seen, as `query 3, execute 12` (commands by name where known).
    pub fn describe(&self) -> String {
        let name = |c: u8| match c {
            0x01 => "quit".to_owned(),
            0x02 => "init_db".to_owned(),
            0x03 => "query".to_owned(),
            0x0e => "ping".to_owned(),
            0x16 => "prepare".to_owned(),
            0x17 => "execute".to_owned(),
            0x19 => "close".to_owned(),
            0x1a => "reset_stmt".to_owned(),
            0x1f => "reset_connection".to_owned(),
            other => format!("0x{other:02x}"),
        };
        (0..=255u8)
            .filter(|c| self.of(*c) > 0)
            .map(|c| format!("{} {}", name(c), self.of(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads the client-to-server byte stream of one connection and counts the commands in it.
#[derive(Debug, Default)]
struct PacketScanner {
    header: [u8; 4],
    /// How many header bytes of the current packet have been read.
    have: usize,
    /// How many payload bytes of the current packet are still to come.
    remaining: usize,
    /// Whether the next payload byte is the command of a new sequence.
    command_next: bool,
}

impl PacketScanner {
    /// Feeds the next bytes of the stream, counting each command that starts in them.
    fn feed(&mut self, mut bytes: &[u8], counts: &mut CommandCounts) {
        while !bytes.is_empty() {
            if self.remaining == 0 && !self.command_next {
                // Reading a header.
                let take = (4 - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have == 4 {
                    self.have = 0;
                    let [a, b, c, sequence] = self.header;
                    self.remaining = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
                    self.command_next = sequence == 0 && self.remaining > 0;
                }
                continue;
            }
            if self.command_next {
                counts.by_command[usize::from(bytes[0])] += 1;
                self.command_next = false;
            }
            let skip = self.remaining.min(bytes.len());
            self.remaining -= skip;
            bytes = &bytes[skip..];
        }
    }
}

/// A listening proxy to one server; dropping it stops accepting and ends its connections'
/// forwarding.
#[derive(Debug)]
pub struct CountingProxy {
    addr: SocketAddr,
    counts: Arc<Mutex<CommandCounts>>,
    accept: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards every connection to `upstream`.
    /// Runs on the current tokio runtime.
    ///
    /// # Errors
    /// When it cannot listen.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(CommandCounts::default()));
        let shared = Arc::clone(&counts);
        let accept = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.retain(|c: &JoinHandle<()>| !c.is_finished());
                connections.push(tokio::spawn(forward(client, upstream, Arc::clone(&shared))));
            }
        });
        Ok(Self { addr, counts, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The commands counted so far.
    pub fn counts(&self) -> CommandCounts {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Forwards one connection both ways, counting the client's commands.
async fn forward(client: TcpStream, upstream: SocketAddr, counts: Arc<Mutex<CommandCounts>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut scanner = PacketScanner::default();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
                scanner.feed(&buffer[..n], &mut counts);
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![(len & 0xff) as u8, (len >> 8 & 0xff) as u8, (len >> 16) as u8, sequence];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn counts_commands_but_not_the_handshake_whatever_the_chunks() {
        let mut stream = packet(1, b"handshake response");
        stream.extend(packet(0, b"\x03SELECT 1"));
        stream.extend(packet(0, b"\x16SELECT ?"));
        stream.extend(packet(0, b"\x17\x01\x00\x00\x00"));
        stream.extend(packet(0, b"\x19\x01\x00\x00\x00"));
        stream.extend(packet(0, b"\x0e"));
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut scanner = PacketScanner::default();
            let mut counts = CommandCounts::default();
            for piece in stream.chunks(chunk) {
                scanner.feed(piece, &mut counts);
            }
            assert_eq!(counts.total(), 5, "chunks of {chunk}");
            assert_eq!(counts.round_trips(), 4, "chunks of {chunk}");
            assert_eq!((counts.of(0x03), counts.of(0x16), counts.of(0x17)), (1, 1, 1));
            assert_eq!(counts.describe(), "query 1, ping 1, prepare 1, execute 1, close 1");
        }
    }

    #[test]
    fn differences_and_sums() {
        let mut a = CommandCounts::default();
        a.by_command[3] = 5;
        let mut b = CommandCounts::default();
        b.by_command[3] = 2;
        b.by_command[0x17] = 1;
        assert_eq!(a.since(&b).of(3), 3);
        assert_eq!(a.since(&b).of(0x17), 0);
        assert_eq!(a.plus(&b).total(), 8);
    }
}
