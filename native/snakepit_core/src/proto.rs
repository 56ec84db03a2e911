//! Types and service stubs generated from `proto/snakepit/v1/worker.proto` and `bridge.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("snakepit.v1");
