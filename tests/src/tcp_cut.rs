//! A TCP relay in front of one real service that a test can cut: every open connection through
//! it is dropped at once and new ones are closed as soon as they arrive, until it is mended.
//! What a client of a crashed server sees (connections reset, connects refused), without
//! stopping the server the other clients share.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The relay; stops when dropped.
#[derive(Debug)]
pub struct TcpCut {
    address: SocketAddr,
    /// Whether the relay is cut: open connections close when it turns true, new ones are closed
    /// on arrival while it is.
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TcpCut {
    /// Relays `127.0.0.1:<new port>` to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<TcpCut> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let accept = tokio::spawn(relay(listener, upstream.to_owned(), cut.clone()));
        Ok(TcpCut {
            address,
            cut,
            accept,
        })
    }

    /// Where clients connect (`127.0.0.1:port`).
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Drops every open connection and closes new ones until [`mend`](Self::mend).
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays new connections again.
    pub fn mend(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections close when the last sender of `cut` is gone.
    }
}

async fn relay(listener: TcpListener, upstream: String, cut: watch::Sender<bool>) {
    loop {
        // Ends when the relay is dropped (the task is aborted) or the listener fails.
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let mut is_cut = cut.subscribe();
        if *is_cut.borrow_and_update() {
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            // Either side closing, or a cut, ends the connection; dropping both sockets closes
            // them.
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = is_cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}
