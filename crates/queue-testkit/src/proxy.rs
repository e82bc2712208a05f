//! A TCP fault proxy on loopback: the fault cases connect a backend
//! through it and then cut every connection, blackhole the broker or slow
//! it down, the same way on every backend.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use queue_testkit::proxy::{FaultProxy, Mode};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // An echo server stands in for the broker.
//! let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let upstream = echo.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = echo.accept().await {
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = socket.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//! let proxy = FaultProxy::start(upstream).await?;
//! let mut client = tokio::net::TcpStream::connect(proxy.addr()).await?;
//! client.write_all(b"ping").await?;
//! let mut reply = [0u8; 4];
//! client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"ping");
//! proxy.cut(); // the client's connection is reset
//! assert!(client.read(&mut reply).await.map_or(true, |n| n == 0));
//! proxy.set_mode(Mode::Blackhole); // new connections are accepted and never answered
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything as it comes.
    Pass,
    /// Accept connections but forward nothing, either way: the broker looks
    /// alive at the TCP level and never answers.
    Blackhole,
    /// Forward everything, each chunk held back this long.
    Latency(Duration),
}

/// Bytes to replace in the broker's replies, for a broker that tells its
/// clients where to connect next: Kafka's metadata names each broker by
/// its advertised address, which would steer clients past the proxy.
///
/// Replies are read as frames with a 4-byte big-endian length in front
/// (Kafka's framing), and every `from` in a whole frame becomes `to`, so a
/// pattern split across TCP reads is still found. `from` and `to` have the
/// same length, so no frame changes size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRewrite {
    /// The bytes to find.
    pub from: Vec<u8>,
    /// What they become.
    pub to: Vec<u8>,
}

impl ReplyRewrite {
    /// Replace every `from` in `frame` by `to`.
    fn apply(&self, frame: &mut [u8]) {
        let n = self.from.len();
        if n == 0 || n != self.to.len() {
            return;
        }
        let mut at = 0;
        while at + n <= frame.len() {
            if frame[at..at + n] == self.from[..] {
                frame[at..at + n].copy_from_slice(&self.to);
                at += n;
            } else {
                at += 1;
            }
        }
    }
}

/// A running proxy from a loopback port to one upstream address. Dropping
/// it stops accepting and resets every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    rewrite: Option<ReplyRewrite>,
    mode: watch::Sender<Mode>,
    /// Bumped by every cut; connections reset when it changes.
    cuts: watch::Sender<u64>,
    open: AtomicUsize,
    accepted: watch::Sender<u64>,
    /// Chunks read from clients (requests on their way to the broker).
    requests: watch::Sender<u64>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        FaultProxy::start_rewriting(upstream, |_| None).await
    }

    /// [`start`](FaultProxy::start), with the broker's replies rewritten
    /// by what `rewrite` returns for the proxy's own address (`None`: as
    /// they come).
    ///
    /// # Errors
    /// When the rewrite's `from` and `to` differ in length, or a port
    /// cannot be bound.
    pub async fn start_rewriting(
        upstream: SocketAddr,
        rewrite: impl FnOnce(SocketAddr) -> Option<ReplyRewrite>,
    ) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let rewrite = rewrite(addr);
        if let Some(r) = &rewrite {
            if r.from.len() != r.to.len() || r.from.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a reply rewrite replaces bytes with as many bytes ({} became {})",
                        r.from.len(),
                        r.to.len()
                    ),
                ));
            }
        }
        let shared = Arc::new(Shared {
            upstream,
            rewrite,
            mode: watch::Sender::new(Mode::Pass),
            cuts: watch::Sender::new(0),
            open: AtomicUsize::new(0),
            accepted: watch::Sender::new(0),
            requests: watch::Sender::new(0),
        });
        let accepting = tokio::spawn(accept(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accepting,
        })
    }

    /// The proxy's address: connect here instead of to the broker.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change how traffic is treated, for open and new connections alike.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Reset every open connection (an RST to both ends, as a broker
    /// restart or a dropped route does). Returns how many were open.
    pub fn cut(&self) -> usize {
        let open = self.shared.open.load(AtomicOrdering::SeqCst);
        self.shared.cuts.send_modify(|n| *n += 1);
        open
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(AtomicOrdering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        *self.shared.accepted.borrow()
    }

    /// Resolves once more than `n` connections were accepted.
    pub async fn until_accepted_more_than(&self, n: u64) {
        let mut accepted = self.shared.accepted.subscribe();
        let _ = accepted.wait_for(|&a| a > n).await;
    }

    /// Resolves when the next chunk of a request reaches the proxy from a
    /// client: with [`Mode::Latency`] it is then held here, so a cut right
    /// after lands while that call is in flight.
    pub async fn next_request(&self) {
        let mut requests = self.shared.requests.subscribe();
        requests.mark_unchanged();
        let _ = requests.changed().await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.shared.cuts.send_modify(|n| *n += 1);
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.send_modify(|n| *n += 1);
        tokio::spawn(serve(client, shared.clone()));
    }
}

/// Counts a connection open while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}

/// Close `stream` with an RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    shared.open.fetch_add(1, AtomicOrdering::SeqCst);
    let _open = OpenGuard(shared.clone());
    let mut cuts = shared.cuts.subscribe();
    cuts.mark_unchanged();
    let mut mode = shared.mode.subscribe();
    // A blackholed broker accepts and says nothing: connect upstream only
    // once traffic flows again (or give up on a cut).
    tokio::select! {
        () = until_flowing(&mut mode) => {}
        _ = cuts.changed() => return reset(client),
    }
    let connect =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(shared.upstream));
    let mut upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        _ => return reset(client),
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let to_upstream = pump(
            &mut client_read,
            &mut upstream_write,
            shared.mode.subscribe(),
            Some(&shared.requests),
        );
        let to_client = async {
            match &shared.rewrite {
                Some(rewrite) => {
                    pump_frames(
                        &mut upstream_read,
                        &mut client_write,
                        shared.mode.subscribe(),
                        rewrite,
                    )
                    .await
                }
                None => {
                    pump(
                        &mut upstream_read,
                        &mut client_write,
                        shared.mode.subscribe(),
                        None,
                    )
                    .await
                }
            }
        };
        tokio::select! {
            _ = async { tokio::try_join!(to_upstream, to_client) } => {}
            _ = cuts.changed() => {}
        }
    }
    reset(client);
    reset(upstream);
}

/// Resolves once the mode is not `Blackhole`.
async fn until_flowing(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
}

/// Copy one direction, honouring the mode; ends at EOF (passing it on) or
/// on an error.
async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
    chunks: Option<&watch::Sender<u64>>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        until_flowing(&mut mode).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        if let Some(chunks) = chunks {
            chunks.send_modify(|c| *c += 1);
        }
        let current = *mode.borrow();
        if let Mode::Latency(delay) = current {
            tokio::time::sleep(delay).await;
        }
        // Bytes read just before a blackhole began are held until it ends.
        until_flowing(&mut mode).await;
        to.write_all(&buf[..n]).await?;
    }
}

/// [`pump`] for replies read as length-prefixed frames, each rewritten
/// whole before it is passed on.
async fn pump_frames(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
    rewrite: &ReplyRewrite,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        until_flowing(&mut mode).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // A partial frame at EOF goes on as it is.
            to.write_all(&pending).await?;
            to.shutdown().await?;
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let mut whole = 0;
        while let Some(head) = pending.get(whole..whole + 4) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let end = whole + 4 + len;
            if end > pending.len() {
                break;
            }
            rewrite.apply(&mut pending[whole + 4..end]);
            whole = end;
        }
        if whole == 0 {
            continue;
        }
        let current = *mode.borrow();
        if let Mode::Latency(delay) = current {
            tokio::time::sleep(delay).await;
        }
        until_flowing(&mut mode).await;
        to.write_all(&pending[..whole]).await?;
        pending.drain(..whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(client: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
        client.write_all(b"hello").await?;
        let mut reply = [0u8; 5];
        tokio::time::timeout(within, client.read_exact(&mut reply))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply"))??;
        Ok(reply.to_vec())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_cuts_blackholes_and_delays() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut client, Duration::from_secs(5))
                .await
                .unwrap(),
            b"hello"
        );

        // A cut resets the open connection.
        assert_eq!(proxy.cut(), 1);
        let mut byte = [0u8; 1];
        let after_cut = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .expect("the cut is seen at once");
        assert!(matches!(after_cut, Ok(0) | Err(_)), "{after_cut:?}");

        // A blackhole accepts and never answers, then lets traffic through.
        proxy.set_mode(Mode::Blackhole);
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let silent = round_trip(&mut client, Duration::from_millis(300)).await;
        assert_eq!(silent.unwrap_err().kind(), io::ErrorKind::TimedOut);
        proxy.set_mode(Mode::Pass);
        let mut reply = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
            .await
            .expect("held bytes flow once the blackhole ends")
            .unwrap();
        assert_eq!(&reply, b"hello");

        // Latency holds every chunk back.
        proxy.set_mode(Mode::Latency(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        round_trip(&mut client, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "both ways delayed"
        );
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rewrites_whole_reply_frames() {
        let rewrite = |_| {
            Some(ReplyRewrite {
                from: b"host:1".to_vec(),
                to: b"host:2".to_vec(),
            })
        };
        let proxy = FaultProxy::start_rewriting(echo_server().await, rewrite)
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        // One frame sent in two pieces that split the pattern: the echo may
        // return it in two reads, and the rewrite still finds it.
        let body = b"at host:1 and host:1!";
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        client.write_all(&frame[..10]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&frame[10..]).await.unwrap();
        let mut reply = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
            .await
            .expect("the frame comes back")
            .unwrap();
        assert_eq!(&reply[4..], b"at host:2 and host:2!");

        let uneven = |_| {
            Some(ReplyRewrite {
                from: b"a".to_vec(),
                to: b"bc".to_vec(),
            })
        };
        let err = FaultProxy::start_rewriting(echo_server().await, uneven)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
