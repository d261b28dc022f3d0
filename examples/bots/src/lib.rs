//! Example bots on `sdk-ext`, written to be copied.
//!
//! A bot acts with its own power level, usually higher than its users'. So each command is
//! checked against the power of the user who gave it: the bot never does for someone what that
//! user's own power does not allow (no confused deputy), it says why it refused, and it ignores
//! its own messages.
//!
//! * [`topic::TopicBot`]: `!topic <text>` sets the room's topic as encrypted state (switching the
//!   room to encrypted state first when it is not, for a user who may do that too); `!state`
//!   reports the decrypted name and topic and the rejected and waiting events.
//! * [`concierge::Concierge`]: `!invite @user` invites with history (MSC4268) for a user who may
//!   invite, and answers with the invite report; invited itself, it joins and reports the
//!   history it could read and who shared it.
//!
//! [`serve`] runs a bot on a logged-in client with the extension installed; the binaries
//! `topic_bot` and `history_concierge` log in from environment variables ([`login_from_env`])
//! and call it:
//!
//! ```sh
//! HOMESERVER=http://127.0.0.1:8008 BOT_USER=bot BOT_PASSWORD=secret \
//!     cargo run -p example-bots --bin topic_bot
//! ```

pub mod concierge;
pub mod power;
mod serve;
pub mod topic;

pub use serve::{Bot, login_from_env, serve, set_up_cross_signing};
