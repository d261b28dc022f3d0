//! Protocol core for encrypted room state and shared history.
