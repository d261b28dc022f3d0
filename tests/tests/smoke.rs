//! The demo flow against the real homeserver.

use integration_tests::demo::{self, Narrator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_flow_decrypts_the_message_the_state_and_the_shared_history() -> anyhow::Result<()> {
    integration_tests::init_tracing("warn");
    let outcome = demo::run(&mut Narrator::default()).await?;
    assert_eq!(outcome.received_body, outcome.sent_body);
    let info = outcome.encryption_info.expect("the message must arrive encrypted");
    assert!(info.session_id().is_some(), "decrypted with a Megolm session");

    let (name, topic) = outcome.sent_name_and_topic;
    assert_eq!(outcome.read_name_and_topic, (Some(name.clone()), Some(topic)));
    assert!(!outcome.server_saw_plaintext, "the homeserver must only hold ciphertext");
    assert_eq!(outcome.invitee_preview_name.as_ref(), Some(&name));
    assert_eq!(outcome.invitee_read_name, Some(name));
    assert!(outcome.invitee_read_history, "the invitee reads the history Alice shared");
    let (read, set) = &outcome.joiner_read_name;
    assert_eq!(read.as_ref(), Some(set), "a joiner without invite reads the name");
    let (previewed, set) = &outcome.restricted_preview_name;
    assert_eq!(previewed.as_ref(), Some(set), "a restricted room's name shows before joining");
    Ok(())
}
