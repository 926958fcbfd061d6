//! JSON-RPC 2.0 server, method registry, framework methods and config load/save, wire-compatible
//! with SPDK so its `spdk-rpc` client works unchanged.
//!
//! Nothing here owns a thread: the app drives [`RpcServer::poll`] from a poller, handlers run on
//! the calling thread and answer through a `Send` [`Responder`], now or later, from anywhere.

pub mod config;
pub mod error;
pub mod methods;
pub mod registry;
pub mod server;
pub mod stream;
pub mod subsystem;
pub mod wire;

pub use config::{ConfigEntry, ConfigError, ConfigLoader, Spawn, parse_config};
pub use error::{ALREADY_INITIALIZED_MSG, NOT_INITIALIZED_MSG, RpcError};
pub use methods::{StartInitHook, VersionInfo, register_builtin_methods, set_start_init_hook};
pub use registry::{
    AppState, Handler, NoParams, Registry, Responder, StateMask, call, decode_params, methods,
    register, register_raw, set_state, state,
};
pub use server::RpcServer;
pub use stream::{DecodeError, MAX_REQUEST_BYTES, RequestDecoder};
pub use subsystem::{
    Subsystem, WriteConfig, register_subsystem, save_config, subsystem_config, subsystems,
};
