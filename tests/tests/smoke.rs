//! The demo flow against the real homeserver.

use integration_tests::demo::{self, Narrator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flow_decrypts_the_message() -> anyhow::Result<()> {
    integration_tests::init_tracing("warn");
    let outcome = demo::run(&mut Narrator::default()).await?;
    assert_eq!(outcome.received_body, outcome.sent_body);
    let info = outcome.encryption_info.expect("the message must arrive encrypted");
    assert!(info.session_id().is_some(), "decrypted with a Megolm session");
    Ok(())
}
