//! Layer 2, Python-object helpers: reading a code object's fields in place
//! and the bounded reprs of values for the value probes. Depends only on
//! `config`; knows nothing of probes, interpreters' state or the watcher.

pub mod bounded;
pub mod code_info;
pub mod exception;
pub mod fast_repr;
pub mod object_repr;
pub mod repr;
