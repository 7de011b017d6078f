//! A TCP proxy on loopback that can cut every connection through it at once: requests that
//! reached the server lose their answers, which is how a client learns about retries that
//! must not write twice.

use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:<port> to `target`.
pub struct Proxy {
    pub addr: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `target` (host:port).
    pub async fn start(target: &str) -> Proxy {
        Self::start_on(0, target).await
    }

    /// A free loopback port, for a proxy started later (e.g. one a node advertises as its own
    /// address, so that clients reach it only through the proxy).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Starts forwarding 127.0.0.1:`port` (0: any) to `target`.
    pub async fn start_on(port: u16, target: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = target.to_string();
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        let _ = client.set_nodelay(true);
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    let mut c = conns.lock().unwrap();
                    c.retain(|t| !t.is_finished());
                    c.push(task);
                }
            })
        };
        Proxy {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every open connection (both directions, at once). Returns how many there were.
    pub fn cut(&self) -> usize {
        let mut c = self.conns.lock().unwrap();
        let n = c.iter().filter(|t| !t.is_finished()).count();
        for t in c.drain(..) {
            t.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
