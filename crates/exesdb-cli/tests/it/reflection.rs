//! gRPC server reflection is on, in both protocol versions (v1, and v1alpha for the Python
//! grpcio-reflection client and older grpcurl releases): a generic tool can list the services
//! and fetch their schema.

use crate::common::Server;
use tokio_stream::StreamExt;

/// The same conversation in one version of the protocol: list the services, then fetch the
/// file that defines `exesdb.v1.EventStore`.
macro_rules! reflection_conversation {
    ($test:ident, $version:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let dir = tempfile::tempdir().expect("tempdir");
            let server = Server::start(dir.path());
            let channel = tonic::transport::Endpoint::from_shared(server.url())
                .expect("url")
                .connect()
                .await
                .expect("connect");
            let mut client = ServerReflectionClient::new(channel);
            let requests = tokio_stream::iter(vec![
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                },
                ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol(
                        "exesdb.v1.EventStore".into(),
                    )),
                },
            ]);
            let mut responses = client
                .server_reflection_info(requests)
                .await
                .expect("reflection call")
                .into_inner();
            let first = responses.next().await.expect("a response").expect("ok");
            let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
                panic!("expected a service list, got {first:?}");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            for service in ["exesdb.v1.EventStore", "exesdb.v1.SystemService"] {
                assert!(
                    names.iter().any(|n| n == service),
                    "{service} not in {names:?}"
                );
            }
            let second = responses.next().await.expect("a response").expect("ok");
            let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response
            else {
                panic!("expected a file descriptor, got {second:?}");
            };
            assert!(!files.file_descriptor_proto.is_empty());
        }
    };
}

reflection_conversation!(reflection_v1_lists_the_services_and_describes_them, v1);
reflection_conversation!(
    reflection_v1alpha_lists_the_services_and_describes_them,
    v1alpha
);
