//! Server start-up shared by the server's integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use grok1_server::{
    serve_on, AppState, ConnectionLimits, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
};

/// The default timeouts, room for 256 connections.
pub fn default_limits() -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: DEFAULT_HEADER_TIMEOUT,
        body_timeout: DEFAULT_BODY_TIMEOUT,
        max_connections: 256,
    }
}

/// Serves `state` on a free loopback port from a runtime on its own thread
/// (two workers) until the test process ends; returns the address.
pub fn serve_in_background(state: AppState, limits: ConnectionLimits) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve_on(listener, state, &limits, std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}
