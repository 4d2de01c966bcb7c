//! The Control service on the local unix socket: every call goes to this
//! node's manager ([`super::ControlService`], as a local caller) when it runs
//! one; the network calls of a worker go to its node forwarder.

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::control_server::Control;

use super::LocalControl;

#[tonic::async_trait]
impl Control for LocalControl {
    async fn update_cluster(
        &self,
        req: Request<pb::UpdateClusterRequest>,
    ) -> std::result::Result<Response<pb::ClusterSummary>, Status> {
        Control::update_cluster(&self.inner()?, req).await
    }

    async fn unlock_key(
        &self,
        req: Request<pb::UnlockKeyRequest>,
    ) -> std::result::Result<Response<pb::UnlockKeyResponse>, Status> {
        Control::unlock_key(&self.inner()?, req).await
    }

    async fn get_cluster(
        &self,
        req: Request<pb::GetClusterRequest>,
    ) -> std::result::Result<Response<pb::ClusterSummary>, Status> {
        Control::get_cluster(&self.inner()?, req).await
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> std::result::Result<Response<pb::ListNodesResponse>, Status> {
        Control::list_nodes(&self.inner()?, req).await
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        Control::get_node(&self.inner()?, req).await
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> std::result::Result<Response<pb::UpdateNodeResponse>, Status> {
        Control::update_node(&self.inner()?, req).await
    }

    async fn set_node_role(
        &self,
        req: Request<pb::SetNodeRoleRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        Control::set_node_role(&self.inner()?, req).await
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> std::result::Result<Response<pb::RemoveNodeResponse>, Status> {
        Control::remove_node(&self.inner()?, req).await
    }

    async fn get_join_tokens(
        &self,
        req: Request<pb::GetJoinTokensRequest>,
    ) -> std::result::Result<Response<pb::JoinTokens>, Status> {
        Control::get_join_tokens(&self.inner()?, req).await
    }

    async fn rotate_join_token(
        &self,
        req: Request<pb::RotateJoinTokenRequest>,
    ) -> std::result::Result<Response<pb::JoinTokens>, Status> {
        Control::rotate_join_token(&self.inner()?, req).await
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> std::result::Result<Response<pb::Network>, Status> {
        let r = req.get_ref();
        if r.driver == "bridge"
            && !r.subnet.is_empty()
            && let Some(n) = &self.node
        {
            n.check_bridge_subnet(&r.subnet).await?;
        }
        match self.route()? {
            Ok(c) => Control::create_network(&c, req).await,
            Err(n) => Ok(Response::new(n.create(req.into_inner()).await?)),
        }
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> std::result::Result<Response<pb::ListNetworksResponse>, Status> {
        match self.route()? {
            Ok(c) => Control::list_networks(&c, req).await,
            Err(n) => Ok(Response::new(n.list().await?)),
        }
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> std::result::Result<Response<pb::NetworkDetail>, Status> {
        match self.route()? {
            Ok(c) => Control::get_network(&c, req).await,
            Err(n) => Ok(Response::new(n.get(req.into_inner()).await?)),
        }
    }

    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> std::result::Result<Response<pb::RemoveNetworkResponse>, Status> {
        match self.route()? {
            Ok(c) => Control::remove_network(&c, req).await,
            Err(n) => {
                n.remove(req.into_inner()).await?;
                Ok(Response::new(pb::RemoveNetworkResponse {}))
            }
        }
    }

    async fn connect_network(
        &self,
        req: Request<pb::ConnectNetworkRequest>,
    ) -> std::result::Result<Response<pb::ConnectNetworkResponse>, Status> {
        match self.route()? {
            Ok(c) => Control::connect_network(&c, req).await,
            Err(n) => {
                n.connect(req.into_inner(), true).await?;
                Ok(Response::new(pb::ConnectNetworkResponse {}))
            }
        }
    }

    async fn disconnect_network(
        &self,
        req: Request<pb::DisconnectNetworkRequest>,
    ) -> std::result::Result<Response<pb::ConnectNetworkResponse>, Status> {
        match self.route()? {
            Ok(c) => Control::disconnect_network(&c, req).await,
            Err(n) => {
                let r = req.into_inner();
                n.connect(
                    pb::ConnectNetworkRequest {
                        ip6: String::new(),
                        network: r.network,
                        task: r.task,
                        ip: String::new(),
                        aliases: Vec::new(),
                    },
                    false,
                )
                .await?;
                Ok(Response::new(pb::ConnectNetworkResponse {}))
            }
        }
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> std::result::Result<Response<pb::ListTasksResponse>, Status> {
        Control::list_tasks(&self.inner()?, req).await
    }

    async fn remove_task(
        &self,
        req: Request<pb::RemoveTaskRequest>,
    ) -> std::result::Result<Response<pb::RemoveTaskResponse>, Status> {
        Control::remove_task(&self.inner()?, req).await
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        Control::create_service(&self.inner()?, req).await
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        Control::update_service(&self.inner()?, req).await
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> std::result::Result<Response<pb::ListServicesResponse>, Status> {
        Control::list_services(&self.inner()?, req).await
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> std::result::Result<Response<pb::Service>, Status> {
        Control::get_service(&self.inner()?, req).await
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> std::result::Result<Response<pb::RemoveServiceResponse>, Status> {
        Control::remove_service(&self.inner()?, req).await
    }

    type ServiceLogsStream = super::LogStream;

    type EventsStream = super::events::EventStream;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> std::result::Result<Response<super::events::EventStream>, Status> {
        Control::events(&self.inner()?, req).await
    }

    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> std::result::Result<Response<super::LogStream>, Status> {
        Control::service_logs(&self.inner()?, req).await
    }

    async fn load_image(
        &self,
        req: Request<tonic::Streaming<pb::LoadImageRequest>>,
    ) -> std::result::Result<Response<pb::ClusterImageLoadResponse>, Status> {
        Control::load_image(&self.inner()?, req).await
    }

    async fn list_cluster_images(
        &self,
        req: Request<pb::ListClusterImagesRequest>,
    ) -> std::result::Result<Response<pb::ListClusterImagesResponse>, Status> {
        Control::list_cluster_images(&self.inner()?, req).await
    }

    async fn rotate_node_key(
        &self,
        req: Request<pb::RotateNodeKeyRequest>,
    ) -> std::result::Result<Response<pb::RotateNodeKeyResponse>, Status> {
        Control::rotate_node_key(&self.inner()?, req).await
    }

    async fn doctor(
        &self,
        req: Request<pb::DoctorRequest>,
    ) -> std::result::Result<Response<pb::DoctorReport>, Status> {
        Control::doctor(&self.inner()?, req).await
    }
}
