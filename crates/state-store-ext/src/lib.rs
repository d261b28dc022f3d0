//! Persistence for encrypted room state.
