//! Seed 003's `aeroarc.relay.v1.RelayControl` over gRPC (tonic): `ListActiveDrones` and
//! `GetDroneStatus` answered from the same live data as `GET /v1/drones` (and, with
//! `fleet_wide`, the Redis registry). Off by default; the relay serves it on `[grpc] listen`.
//! Auth is the HTTP API's: with a viewer token configured, calls need
//! `authorization: Bearer <viewer or admin token>`.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::fleet::{Fleet, SessionSnapshot};
use crate::registry::FleetReader;

/// Generated messages, server and client of `relay_control.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("aeroarc.relay.v1");
}

use pb::relay_control_server::{RelayControl, RelayControlServer};

/// Default page size of `ListActiveDrones`.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page size.
pub const MAX_PAGE: usize = 1000;

/// The service.
#[derive(Clone)]
pub struct RelayControlService {
    fleet: Arc<Fleet>,
    reader: Arc<FleetReader>,
    relay_id: Arc<str>,
}

impl RelayControlService {
    /// A service over this relay's fleet and the registry reader.
    pub fn new(fleet: Arc<Fleet>, reader: Arc<FleetReader>, relay_id: Arc<str>) -> Self {
        RelayControlService {
            fleet,
            reader,
            relay_id,
        }
    }

    fn local_status(&self, s: SessionSnapshot) -> pb::DroneStatus {
        pb::DroneStatus {
            agent_id: s.agent_id,
            session_id: s.session_id,
            relay_id: self.relay_id.to_string(),
            local: true,
            flight_id: s.flight_id.unwrap_or_default(),
            connected_since_unix_ms: s.connected_since_unix_ms,
            last_heartbeat_unix_ms: s.last_heartbeat_unix_ms.unwrap_or(0),
            frames: s.frames,
            bytes: s.bytes,
            inflight: s.inflight,
            remote_addr: s.remote_addr.to_string(),
            ack_latency_us: s.ack_latency_us.unwrap_or(0),
        }
    }

    /// Every drone in order: this relay's (local) or the registry's merged with this relay's.
    async fn all(&self, fleet_wide: bool) -> Vec<pb::DroneStatus> {
        let mut live: Vec<pb::DroneStatus> = self
            .fleet
            .all()
            .iter()
            .map(|s| self.local_status(s.snapshot()))
            .collect();
        if !fleet_wide {
            return live;
        }
        let snap = self.reader.drone_view().await;
        let me = &*self.relay_id;
        let mut by_id: std::collections::BTreeMap<String, pb::DroneStatus> = snap
            .drones
            .iter()
            .filter(|d| d.relay_id != me)
            .map(|d| {
                (
                    d.agent_id.clone(),
                    pb::DroneStatus {
                        agent_id: d.agent_id.clone(),
                        session_id: d.session_id.clone(),
                        relay_id: d.relay_id.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for d in live.drain(..) {
            by_id.insert(d.agent_id.clone(), d);
        }
        by_id.into_values().collect()
    }
}

#[tonic::async_trait]
impl RelayControl for RelayControlService {
    async fn list_active_drones(
        &self,
        req: Request<pb::ListActiveDronesRequest>,
    ) -> Result<Response<pb::ListActiveDronesResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size must be 1..={MAX_PAGE}"
                )))
            }
            n => n,
        };
        let offset = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse::<usize>()
                .map_err(|_| Status::invalid_argument("bad page_token"))?
        };
        let all = self.all(r.fleet_wide).await;
        let total = all.len();
        let drones: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
        let next = offset + drones.len();
        Ok(Response::new(pb::ListActiveDronesResponse {
            drones,
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            total: total as u32,
        }))
    }

    async fn get_drone_status(
        &self,
        req: Request<pb::GetDroneStatusRequest>,
    ) -> Result<Response<pb::GetDroneStatusResponse>, Status> {
        let r = req.into_inner();
        if r.agent_id.is_empty() {
            return Err(Status::invalid_argument("agent_id is required"));
        }
        if let Some(s) = self.fleet.get(&r.agent_id) {
            return Ok(Response::new(pb::GetDroneStatusResponse {
                status: Some(self.local_status(s.snapshot())),
            }));
        }
        if r.fleet_wide {
            let snap = self.reader.drone_view().await;
            if let Some(d) = snap
                .find(&r.agent_id)
                .filter(|d| d.relay_id != *self.relay_id)
            {
                return Ok(Response::new(pb::GetDroneStatusResponse {
                    status: Some(pb::DroneStatus {
                        agent_id: d.agent_id.clone(),
                        session_id: d.session_id.clone(),
                        relay_id: d.relay_id.clone(),
                        ..Default::default()
                    }),
                }));
            }
        }
        Err(Status::not_found(format!(
            "drone {:?} not found",
            r.agent_id
        )))
    }
}

/// Tokens that open the service (`None`: open).
#[derive(Clone)]
struct Auth {
    viewer: Option<Arc<str>>,
    admin: Option<Arc<str>>,
}

impl Auth {
    fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(viewer) = &self.viewer else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let ok = |t: &str| bool::from(t.as_bytes().ct_eq(given.as_bytes()));
        if ok(viewer) || self.admin.as_deref().is_some_and(ok) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
    }
}

/// A running gRPC server (owned by [`crate::Control`], stopped in its shutdown).
#[derive(Debug)]
pub struct GrpcServer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl GrpcServer {
    /// Serves `svc` on `listener` (already bound) behind the viewer/admin token check.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        svc: RelayControlService,
        viewer_token: Option<Arc<str>>,
        admin_token: Option<Arc<str>>,
    ) -> Self {
        let auth = Auth {
            viewer: viewer_token,
            admin: admin_token,
        };
        let server = RelayControlServer::with_interceptor(svc, move |r| auth.check(r));
        let (tx, rx) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "grpc server stopped");
            }
        });
        GrpcServer {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving (in-flight calls finish) and waits for the task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut t) = self.task.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                tracing::warn!("grpc server did not stop in 5 s; aborted");
                t.abort();
            }
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
