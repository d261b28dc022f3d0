//! The features, side by side, each importing only the bottom layer.
//!
//! Each holds a [`Context`](crate::context::Context) clone and its own state, and never imports
//! another feature. What one feature's result means for another (keys stored, so validate waiting events again) is decided by the
//! extension on top.

pub(crate) mod history;
pub(crate) mod invites;
pub(crate) mod requests;
pub(crate) mod restricted;
pub(crate) mod state;
