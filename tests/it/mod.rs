pub mod support;

mod broker_restart;
mod capture;
mod cli;
mod compose;
mod kafka_broker;
mod observe;
mod postgres;
mod python_registry_client;
mod registry_api;
