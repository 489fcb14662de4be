//! A small HTTP/1 server on 127.0.0.1 for test doubles: its own thread and
//! runtime, a free port, stopped (connections and delayed answers too) when
//! dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A running server.
pub struct LocalHttp {
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalHttp {
    /// Serves `handle` for every request; `name` labels the thread and panics.
    pub fn start<H, F>(name: &str, handle: H) -> LocalHttp
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        LocalHttp::start_on(name, 0, handle)
    }

    /// [`LocalHttp::start`] on `port` (0: a free one), e.g. to come back on
    /// the port of a server that was stopped.
    pub fn start_on<H, F>(name: &str, port: u16, handle: H) -> LocalHttp
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{name}: cannot bind 127.0.0.1:{port}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{name}: set_nonblocking: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: local_addr: {e}"))
            .port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let label = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(&label, listener, handle, rx))
            .unwrap_or_else(|e| panic!("{name}: spawn: {e}"));
        LocalHttp {
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LocalHttp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve<H, F>(
    name: &str,
    listener: TcpListener,
    handle: H,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("{name}: runtime: {e}"),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => panic!("{name}: listener: {e}"),
        };
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let service = service_fn(handle);
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            }
        }
    });
    // Dropping the runtime cancels connections still open and requests
    // still delayed.
}
