//! Encrypted room state and shared history for matrix-sdk apps.
