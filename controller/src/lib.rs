//! kproxy, a Kubernetes service proxy.
//!
//! Data flows one way: a [`source`] fills a [`model::Snapshot`], the [`planner`] turns it
//! into a [`kproxy_dataplane::plan::ProxyPlan`] for this node, and a dataplane backend
//! renders and applies that plan.

pub mod app;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod explain;
pub mod healthcheck;
pub mod host_setup;
pub mod model;
pub mod node;
pub mod planner;
pub mod servers;
pub mod source;
pub mod sync;
