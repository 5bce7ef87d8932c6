//! Layer 4, each interpreter's side: its module object and state, the
//! `sys.monitoring` callbacks that fire the probes, `PYUSDT_FILTER`'s
//! per-code decisions, turning monitoring on and
//! off there, its life-cycle hooks, and the `Target` through which the
//! watcher reaches it. Uses every layer below; nothing below uses it.

mod callbacks;
mod filter;
mod hooks;
pub mod module;
mod monitoring;
mod state;
mod target;
