//! The history concierge (see `example_bots::concierge`): logs in from the environment and
//! serves.
//!
//! ```sh
//! HOMESERVER=http://127.0.0.1:8008 BOT_USER=concierge BOT_PASSWORD=secret \
//!     cargo run -p example-bots --bin history_concierge
//! ```

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (client, extension) = example_bots::login_from_env().await?;
    example_bots::serve(&client, &extension, example_bots::concierge::Concierge).await
}
