//! The transport yardstick: a plain arrow-flight server whose `DoGet` streams record batches
//! already in memory, encoded with arrow-flight's `FlightDataEncoderBuilder` — no planning, no
//! scan, no executors. What a client reads from it over loopback is the most any Flight server
//! built on the same arrow-flight/tonic stack can deliver on this machine.
//!
//! Contract: [`PlainFlightServer::start`] serves on 127.0.0.1 (port 0) until dropped; any ticket
//! streams every batch once; every other RPC is `UNIMPLEMENTED`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug)]
pub(crate) struct PlainFlightServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for PlainFlightServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PlainFlightServer {
    pub(crate) async fn start(batches: Vec<RecordBatch>) -> Result<Self> {
        // TcpIncoming with TCP_NODELAY, as `Server::serve` would set it up (a hand-made
        // incoming stream of plain TcpStreams would leave Nagle's algorithm on).
        let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into())
            .context("binding the plain Flight server")?
            .with_nodelay(Some(true));
        let addr = incoming.local_addr()?;
        let service = FlightServiceServer::new(Batches(Arc::new(batches)))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("quiver-bench: plain Flight server: {e}");
            }
        });
        Ok(Self { addr, task })
    }
}

struct Batches(Arc<Vec<RecordBatch>>);

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not part of this benchmark server"
    )))
}

#[tonic::async_trait]
impl FlightService for Batches {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let batches = Arc::clone(&self.0);
        let input: BoxStream<'static, _> = stream::iter(0..batches.len())
            .map(move |i| Ok(batches[i].clone()))
            .boxed();
        let encoded = FlightDataEncoderBuilder::new()
            .build(input)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(encoded)))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented("GetFlightInfo")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented("GetSchema")
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented("DoPut")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("DoExchange")
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented("DoAction")
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("ListActions")
    }
}
