//! The NVMe-oF/TCP target: subsystems of namespaces (bdevs) exported to hosts over TCP.
//!
//! ```text
//! error  options  transport       errors, nvmf_create_transport's options, the transport
//! subsystem                       subsystems, namespaces, hosts, controllers (control path)
//! listener                        listening sockets, the acceptor on the app thread
//! controller  admin  discovery    a controller's registers, admin commands, the discovery log
//! poll_group                      one per reactor: owns its connections and polls them
//! connection  request  buffers    a TCP qpair, its request slots, the large-buffer pool
//! io                              NVM commands onto bdev I/O
//! config  rpc                     save_config and the start-up settings, the nvmf_* RPCs
//! ```

pub mod admin;
pub mod buffers;
pub mod config;
pub mod connection;
pub mod controller;
pub mod discovery;
mod error;
pub mod io;
pub mod listener;
pub mod options;
pub mod poll_group;
pub mod request;
pub mod rpc;
pub mod subsystem;
pub mod transport;

pub use error::TargetError;
