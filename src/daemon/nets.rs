//! `weft network` on this node's socket when it is not a manager.

use std::sync::Arc;

use tonic::Status;
use weft_proto::v1 as pb;

use super::*;

/// `weft network` on this node's socket when it is not a manager, and the
/// checks against this node's kernel.
pub(super) struct NodeNets(pub(super) Arc<NodeService>);

impl NodeNets {
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(
            weft_proto::v1::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        self.0.dispatcher(f).await
    }
}

impl NodeService {
    /// One call to the managers' dispatcher, as this node.
    pub(super) async fn dispatcher<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(
            weft_proto::v1::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        a.agent.call(f).await.map_err(worker_status)
    }

    /// The config the managers last pushed to this node (`None` before
    /// the first).
    pub(super) async fn pushed_config(&self) -> Result<Option<Arc<pb::NodeConfig>>, Status> {
        let guard = self.active.lock().await;
        let a = guard.as_ref().ok_or_else(not_member)?;
        Ok(a.agent.config().borrow().clone())
    }
}

#[tonic::async_trait]
impl weft_manager::controlapi::NodeNetworks for NodeNets {
    async fn check_bridge_subnet(&self, subnet: &str) -> Result<(), Status> {
        let subnet = crate::settings::parse_bridge_subnet(subnet)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let routes = self
            .0
            .linux
            .host_routes()
            .await
            .map_err(|e| Status::unavailable(format!("cannot read this host's routes: {e}")))?;
        if let Some(r) = crate::settings::colliding_route(&subnet, &routes) {
            return Err(Status::invalid_argument(format!(
                "subnet {subnet} collides with the host route {} (dev {}) of this node; choose another --subnet",
                r.dest,
                r.dev.as_deref().unwrap_or("?")
            )));
        }
        Ok(())
    }

    async fn create(&self, r: pb::CreateNetworkRequest) -> Result<pb::Network, Status> {
        self.call(|mut c| {
            let r = r.clone();
            async move { c.create_local_network(r).await }
        })
        .await
    }

    async fn list(&self) -> Result<pb::ListNetworksResponse, Status> {
        self.call(|mut c| async move { c.list_node_networks(pb::ListNetworksRequest {}).await })
            .await
    }

    async fn get(&self, r: pb::GetNetworkRequest) -> Result<pb::NetworkDetail, Status> {
        self.call(|mut c| {
            let r = r.clone();
            async move { c.get_node_network(r).await }
        })
        .await
    }

    async fn remove(&self, r: pb::RemoveNetworkRequest) -> Result<(), Status> {
        self.call(|mut c| {
            let r = r.clone();
            async move { c.remove_local_network(r).await }
        })
        .await
        .map(|_| ())
    }

    async fn connect(&self, r: pb::ConnectNetworkRequest, attach: bool) -> Result<(), Status> {
        self.call(|mut c| {
            let r = r.clone();
            async move {
                if attach {
                    c.connect_task(r).await
                } else {
                    c.disconnect_task(pb::DisconnectNetworkRequest {
                        network: r.network,
                        task: r.task,
                    })
                    .await
                }
            }
        })
        .await
        .map(|_| ())
    }
}
