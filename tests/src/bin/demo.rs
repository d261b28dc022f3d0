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
    anyhow::ensure!(
        !outcome.server_saw_plaintext,
        "the homeserver's copy of the room state holds the name or topic in clear"
    );
    println!(
        "\nDone: the message and the room's name and topic crossed the server only as \
         ciphertext, and Bob read them."
    );
    Ok(())
}
