//! Downloading a bundle file through the authenticated media API, capped at the configured size.

use crypto_ext::{BundleError, bundle::BundleLimits};
use ruma::events::room::EncryptedFile;

use crate::{BundleImportError, context::Context};

/// Downloads an encrypted file through the authenticated media API, reading no more than
/// `limits.max_bytes`: a larger `Content-Length` is refused before the body is read, and a body
/// that grows past the cap is dropped there.
pub(super) async fn download(
    ctx: &Context,
    http: &matrix_sdk::reqwest::Client,
    file: &EncryptedFile,
    limits: BundleLimits,
) -> Result<Vec<u8>, BundleImportError> {
    let (server, media_id) =
        file.url.parts().map_err(|e| BundleImportError::InvalidAnnouncement(e.to_string()))?;
    let client = &ctx.client;
    let mut url = client.homeserver();
    url.path_segments_mut()
        .map_err(|()| BundleImportError::Download("unusable homeserver URL".to_owned()))?
        .pop_if_empty()
        .extend(["_matrix", "client", "v1", "media", "download", server.as_str(), media_id]);
    let mut request = bundle_request(http, url, limits);
    if let Some(token) = client.access_token() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| download_error(&e, limits))?;
    let status = response.status();
    if status == matrix_sdk::reqwest::StatusCode::NOT_FOUND {
        return Err(BundleImportError::NotFound);
    }
    if !status.is_success() {
        return Err(BundleImportError::Download(format!("the homeserver answered {status}")));
    }
    read_capped(response, limits).await
}

/// What a failed request or body read says: a timeout names the deadline it ran into.
fn download_error(error: &matrix_sdk::reqwest::Error, limits: BundleLimits) -> BundleImportError {
    if error.is_timeout() {
        BundleImportError::Download(format!(
            "timed out after {:?} (BundleLimits::download_timeout)",
            limits.download_timeout
        ))
    } else {
        BundleImportError::Download(error.to_string())
    }
}

/// The GET of a bundle, bounded in time (from connecting to the last byte of the body) by
/// `limits`.
fn bundle_request(
    http: &matrix_sdk::reqwest::Client,
    url: impl matrix_sdk::reqwest::IntoUrl,
    limits: BundleLimits,
) -> matrix_sdk::reqwest::RequestBuilder {
    http.get(url).timeout(limits.download_timeout)
}

/// Reads a response body of at most `limits.max_bytes`: a larger `Content-Length` is refused
/// before the body is read, and a body without one that grows past the cap is dropped there.
async fn read_capped(
    mut response: matrix_sdk::reqwest::Response,
    limits: BundleLimits,
) -> Result<Vec<u8>, BundleImportError> {
    let max = limits.max_bytes;
    let too_large = |size: usize| BundleImportError::Bundle(BundleError::TooLarge { size, max });
    let announced = response.content_length().map(|len| usize::try_from(len).unwrap_or(usize::MAX));
    if let Some(len) = announced
        && len > max
    {
        return Err(too_large(len));
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|e| download_error(&e, limits))? {
        if body.len() + chunk.len() > max {
            return Err(too_large(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// Serves one request on loopback with `head` (status line and headers), then the `chunks`
    /// of a chunked body; with `chunks` `None` the connection stays open without a body.
    async fn serve_once(head: &'static str, chunks: Option<Vec<Vec<u8>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/bundle", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..read]);
            }
            socket.write_all(head.as_bytes()).await.unwrap();
            let Some(chunks) = chunks else {
                // Never send the body: a reader that waits for it hangs.
                std::future::pending::<()>().await;
                return;
            };
            for chunk in chunks {
                socket.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
                socket.write_all(&chunk).await.unwrap();
                socket.write_all(b"\r\n").await.unwrap();
            }
            socket.write_all(b"0\r\n\r\n").await.unwrap();
        });
        url
    }

    async fn fetch(url: &str, max: usize) -> Result<Vec<u8>, BundleImportError> {
        let response = matrix_sdk::reqwest::Client::new().get(url).send().await.unwrap();
        let limits = BundleLimits { max_bytes: max, ..Default::default() };
        tokio::time::timeout(Duration::from_secs(10), read_capped(response, limits))
            .await
            .expect("the body is not awaited past the cap")
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[tokio::test]
    async fn a_body_without_length_is_cut_at_the_cap() {
        let url = serve_once(CHUNKED, Some(vec![vec![1; 100], vec![2; 100], vec![3; 100]])).await;
        let error = fetch(&url, 250).await.unwrap_err();
        // The size is where reading stopped: past the cap, within the bytes sent.
        assert!(
            matches!(
                error,
                BundleImportError::Bundle(BundleError::TooLarge { size: 251..=300, max: 250 })
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_body_without_length_within_the_cap_is_read_whole() {
        let url = serve_once(CHUNKED, Some(vec![vec![1; 100], vec![2; 100]])).await;
        let body = fetch(&url, 250).await.unwrap();
        assert_eq!(body.len(), 200);
        assert!(body[..100].iter().all(|b| *b == 1) && body[100..].iter().all(|b| *b == 2));
    }

    #[tokio::test]
    async fn a_stalled_download_ends_at_the_timeout() {
        // Headers, then silence: the body never comes.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let url = serve_once(head, None).await;
        let limits =
            BundleLimits { download_timeout: Duration::from_millis(300), ..Default::default() };
        let download = async {
            let response = bundle_request(&matrix_sdk::reqwest::Client::new(), &url, limits)
                .send()
                .await
                .unwrap();
            read_capped(response, BundleLimits { max_bytes: 1000, ..limits }).await
        };
        let error = tokio::time::timeout(Duration::from_secs(10), download)
            .await
            .expect("the download's own timeout ends it")
            .unwrap_err();
        assert!(
            matches!(&error, BundleImportError::Download(reason) if reason.starts_with("timed out")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_before_reading() {
        // The server sends no body at all: reading it would time out.
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        let url = serve_once(head, None).await;
        let error = fetch(&url, 250).await.unwrap_err();
        assert!(
            matches!(
                error,
                BundleImportError::Bundle(BundleError::TooLarge { size: 1_000_000, .. })
            ),
            "{error}"
        );
    }
}
