//! The HTTP server actor: serves [`api::router`] on a listener it re-clones on every (re)start,
//! so the control root can restart it after a failure without re-binding the port.

pub mod api;
pub mod error;
pub mod page;
pub mod usage;
pub mod viewer;

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::AppState;

/// How long a stopping server waits for in-flight requests.
const GRACEFUL: Duration = Duration::from_secs(5);

/// Arguments (cloned for every restart).
#[derive(Clone)]
pub struct HttpArgs {
    /// The bound listener; each incarnation serves a `try_clone` of it.
    pub listener: Arc<StdListener>,
    /// Handler state.
    pub state: AppState,
}

/// Messages of the HTTP server actor.
#[derive(Debug)]
pub enum HttpMsg {
    /// The serve task ended (error text if it failed); the actor fails so its parent restarts it.
    Exited(Option<String>),
    /// Fail on purpose (supervision tests).
    #[doc(hidden)]
    Fail,
}

/// The actor.
#[derive(Debug, Default)]
pub struct HttpServer;

/// Its state: the serve task it owns.
pub struct HttpState {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for HttpState {
    fn drop(&mut self) {
        // Failure path (post_stop is not run): do not leave the serve task behind.
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Actor for HttpServer {
    type Msg = HttpMsg;
    type State = HttpState;
    type Arguments = HttpArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HttpMsg>,
        args: HttpArgs,
    ) -> Result<HttpState, ActorProcessingErr> {
        let std = args.listener.try_clone()?;
        std.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std)?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = api::router(args.state);
        let task = tokio::spawn(async move {
            let res = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            let _ = myself.send_message(HttpMsg::Exited(res.err().map(|e| e.to_string())));
        });
        Ok(HttpState {
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HttpMsg>,
        msg: HttpMsg,
        _state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HttpMsg::Exited(err) => Err(format!(
                "http server exited unexpectedly: {}",
                err.unwrap_or_default()
            )
            .into()),
            HttpMsg::Fail => Err("http server failure requested".into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HttpMsg>,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(tx) = state.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = state.task.take() {
            if tokio::time::timeout(GRACEFUL, &mut task).await.is_err() {
                task.abort();
            }
        }
        Ok(())
    }
}
