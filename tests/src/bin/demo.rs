//! `cargo xtask demo`: runs the example scenario against the homeserver in
//! `MATRIX_HOMESERVER_URL` and narrates it.

use integration_tests::demo::{self, Narrator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The narration is the output; library logs only on request (`RUST_LOG=info`).
    integration_tests::init_tracing("off");
    let url = integration_tests::homeserver_url()?;
    println!("Demo against the homeserver at {url}\n");
    let mut narrator = Narrator::default();
    let outcome = demo::run(&mut narrator).await?;
    anyhow::ensure!(
        outcome.received_body == outcome.sent_body && outcome.encryption_info.is_some(),
        "Bob did not decrypt what Alice sent"
    );
    println!("\nDone: the message crossed the server only as ciphertext and Bob read it.");
    Ok(())
}
