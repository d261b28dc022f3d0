//! The test homeserver's application service: users it registers (`@ts-*`), and state sent in
//! their name with an `origin_server_ts` of our choosing (`?ts=`), as any homeserver could set it.

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    SessionMeta,
    authentication::{SessionTokens, matrix::MatrixSession},
    reqwest,
    ruma::{OwnedDeviceId, OwnedEventId, OwnedUserId, RoomId},
    store::RoomLoadSettings,
};
use serde_json::{Value, json};

use crate::{TestUser, homeserver_url, unique_name};

/// The application service's token (`cargo xtask` writes the same value into the homeserver's
/// registration of it).
pub const APPSERVICE_TOKEN: &str = "integration-tests-appservice-as-token";

fn endpoint(segments: &[&str]) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&homeserver_url()?)?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the homeserver URL cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A JSON body on a request (matrix-sdk's reqwest has no `json` feature).
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
    }
}

/// Sends `request` with the application service's token; its JSON answer, or an error naming
/// `what` with the status and body.
async fn call(request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
    let response = request.bearer_auth(APPSERVICE_TOKEN).send().await?;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.bytes().await?)?;
    if !status.is_success() {
        bail!("{what} through the application service: {status} {body}");
    }
    Ok(body)
}

impl TestUser {
    /// Registers a user through the application service (its name starts with `ts-{prefix}`)
    /// and logs a client in with the device the registration created (no password, no
    /// cross-signing).
    pub async fn register_through_appservice(prefix: &str) -> Result<Self> {
        let username = unique_name(&format!("ts-{prefix}"));
        let request = reqwest::Client::new()
            .post(endpoint(&["_matrix", "client", "v3", "register"])?)
            .json_body(&json!({ "type": "m.login.application_service", "username": username }));
        let body = call(request, &format!("registering {username}")).await?;
        let user_id: OwnedUserId = serde_json::from_value(body["user_id"].clone())?;
        let device_id: OwnedDeviceId = serde_json::from_value(body["device_id"].clone())?;
        let access_token = body["access_token"].as_str().context("an access token")?.to_owned();
        let store_dir = tempfile::tempdir()?;
        let (builder, crypto_store) = Self::client_builder(&store_dir).await?;
        let client = builder.build().await?;
        let session = MatrixSession {
            meta: SessionMeta { user_id, device_id },
            tokens: SessionTokens { access_token, refresh_token: None },
        };
        client.matrix_auth().restore_session(session, RoomLoadSettings::default()).await?;
        Ok(Self { client, password: String::new(), store_dir, crypto_store })
    }

    /// Sends a state event as this application-service user with `origin_server_ts` set to
    /// `ts` (milliseconds since the epoch).
    pub async fn send_state_at(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &Value,
        ts: u64,
    ) -> Result<OwnedEventId> {
        let mut url = endpoint(&[
            "_matrix",
            "client",
            "v3",
            "rooms",
            room_id.as_str(),
            "state",
            event_type,
            state_key,
        ])?;
        url.query_pairs_mut()
            .append_pair("user_id", self.user_id().as_str())
            .append_pair("ts", &ts.to_string());
        let request = reqwest::Client::new().put(url).json_body(content);
        let body = call(request, &format!("sending {event_type} at ts {ts}")).await?;
        Ok(serde_json::from_value(body["event_id"].clone())?)
    }
}
