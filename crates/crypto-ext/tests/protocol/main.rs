//! Protocol tests with in-process `OlmMachine`s wired together in memory: no server, no sleeps.

mod bundles;
mod interop;
mod machines;
mod rejections;
mod sessions;
