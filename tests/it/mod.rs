pub mod support;

mod apply;
mod broker_restart;
mod capture;
mod capture_faults;
mod cli;
mod compose;
mod kafka_broker;
mod observe;
mod pgoutput_crosscheck;
mod postgres;
mod python_registry_client;
mod registry_api;
