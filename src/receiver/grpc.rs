//! OTLP/gRPC on `server.grpc_listen`: the `TraceService`, `MetricsService` and `LogsService`
//! `Export` calls (tonic, with `opentelemetry-proto`'s generated servers), gzip accepted.
//!
//! Same path as HTTP below the transport: the token check and [`Ingest::accept`]; OK only after
//! the spool's fsync. Refusals map to the OTLP/gRPC codes: `INVALID_ARGUMENT` for bad data,
//! `UNAUTHENTICATED`, `RESOURCE_EXHAUSTED` for oversize, and `UNAVAILABLE` with a
//! `google.rpc.RetryInfo` detail when the spool cannot take the data now.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{token_matches, Ingest, Rejection, RETRY_AFTER_SECS};
use crate::observe::{Refusal, Transport};
use crate::otlp::{
    ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportRequest,
    ExportTraceServiceRequest, RpcStatus,
};

pub struct GrpcReceiver {
    pub ingest: Ingest,
    pub max_decompressed: u64,
    pub auth_token: Option<String>,
}

impl GrpcReceiver {
    /// Serves `listener` until `stop` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let limit = self.max_decompressed as usize;
        let traces = TraceServiceServer::from_arc(Arc::clone(&self))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let metrics = MetricsServiceServer::from_arc(Arc::clone(&self))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let logs = LogsServiceServer::from_arc(Arc::clone(&self))
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(limit);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let served = tonic::transport::Server::builder()
            .add_service(traces)
            .add_service(metrics)
            .add_service(logs)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the OTLP/gRPC server stopped");
        }
    }

    async fn accept<R: ExportRequest>(&self, request: Request<R>) -> Result<(), Status> {
        let metadata = request.metadata();
        let header = |name| metadata.get(name).and_then(|v| v.to_str().ok());
        if !token_matches(
            self.auth_token.as_deref(),
            header("x-api-key"),
            header("authorization"),
        ) {
            let rejection = Rejection::new(401, Refusal::Unauthorized, super::TOKEN_HINT);
            return Err(to_status(self.ingest.refuse(rejection)));
        }
        let message = request.into_inner();
        let payload = message.encode_to_vec();
        self.ingest
            .accept(R::SIGNAL, Transport::Grpc, &payload, message.items())
            .await
            .map_err(|r| to_status(self.ingest.refuse(r)))
    }
}

/// `google.rpc.RetryInfo`: how long a client should wait, carried in the status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

fn to_status(rejection: Rejection) -> Status {
    let message = rejection.message;
    match rejection.status {
        401 => Status::unauthenticated(message),
        413 => Status::resource_exhausted(message),
        503 => {
            let retry = RetryInfo {
                retry_delay: Some(prost_types::Duration {
                    seconds: RETRY_AFTER_SECS as i64,
                    nanos: 0,
                }),
            };
            let status = RpcStatus {
                code: tonic::Code::Unavailable as i32,
                message: message.clone(),
                details: vec![prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: retry.encode_to_vec(),
                }],
            };
            Status::with_details(
                tonic::Code::Unavailable,
                message,
                status.encode_to_vec().into(),
            )
        }
        _ => Status::invalid_argument(message),
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.accept(request).await?;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.accept(request).await?;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.accept(request).await?;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}
