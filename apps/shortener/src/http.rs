//! HTTP API of the shortener.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::base62;
use crate::clicks::ClickCounter;
use crate::store::{Store, StoreError};

/// Maximum length of a long URL in bytes.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// Redirect status of `GET /{code}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// 301 Moved Permanently: browsers cache it, so repeat visits skip the
    /// shortener and are not counted.
    Permanent,
    /// 302 Found: every visit reaches the shortener and is counted.
    Temporary,
}

impl Redirect {
    fn status(self) -> StatusCode {
        match self {
            Redirect::Permanent => StatusCode::MOVED_PERMANENTLY,
            Redirect::Temporary => StatusCode::FOUND,
        }
    }
}

/// State shared by the handlers.
pub struct AppState {
    /// Shortener data in the cluster.
    pub store: Store,
    /// Clicks not yet flushed.
    pub clicks: Arc<ClickCounter>,
    /// Prefix of short URLs, without a trailing slash.
    pub base_url: String,
    /// Status of redirects.
    pub redirect: Redirect,
}

/// Builds the router of the shortener, without the rate limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(form_page))
        .route("/api/v1/data/shorten", post(shorten))
        .route("/api/v1/stats/{code}", get(stats))
        .route("/{code}", get(redirect))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShortenRequest {
    long_url: String,
}

/// Error response with a JSON body `{"error": message}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("{error}; retry later"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Validates a long URL and returns its normalized form.
pub fn normalize_url(input: &str) -> Result<String, String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("longUrl is empty; send an absolute http or https URL".into());
    }
    if input.len() > MAX_URL_LEN {
        return Err(format!(
            "longUrl is {} bytes, above the maximum of {MAX_URL_LEN}",
            input.len()
        ));
    }
    let parsed =
        url::Url::parse(input).map_err(|error| format!("invalid longUrl {input:?}: {error}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!(
            "invalid longUrl {input:?}: scheme {:?} is not http or https",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid longUrl {input:?}: no host"));
    }
    Ok(parsed.to_string())
}

/// Reads `longUrl` from a JSON body or, for the HTML form, a form body.
fn long_url_of(headers: &HeaderMap, body: &[u8]) -> Result<(String, bool), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let long_url = url::form_urlencoded::parse(body)
            .find(|(name, _)| name == "longUrl")
            .map(|(_, value)| value.into_owned())
            .ok_or_else(|| ApiError::bad_request("missing form field longUrl"))?;
        return Ok((long_url, true));
    }
    let request: ShortenRequest = serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "invalid JSON body: {error}; send {{\"longUrl\": \"https://...\"}}"
        ))
    })?;
    Ok((request.long_url, false))
}

async fn shorten(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (input, from_form) = long_url_of(&headers, &body)?;
    let long_url = normalize_url(&input).map_err(ApiError::bad_request)?;
    let shortened = state.store.shorten(&long_url).await?;
    let short_url = format!("{}/{}", state.base_url, shortened.code);
    if shortened.created {
        tracing::info!(code = %shortened.code, %long_url, "created short code");
    }

    if from_form {
        let page = format!(
            "<!doctype html><title>ringkv shortener</title>\
             <p><a href=\"{short}\">{short}</a> redirects to {long}</p><p><a href=\"/\">Shorten another</a></p>",
            short = html_escape(&short_url),
            long = html_escape(&long_url),
        );
        return Ok(Html(page).into_response());
    }
    let status = if shortened.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "shortUrl": short_url,
        "code": shortened.code,
        "longUrl": long_url,
    });
    Ok((status, Json(body)).into_response())
}

fn not_found(code: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("short code {code:?} not found"),
    }
}

async fn redirect(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    if base62::decode(&code).is_none() {
        return Err(not_found(&code));
    }
    let Some(long_url) = state.store.resolve(&code).await? else {
        return Err(not_found(&code));
    };
    state.clicks.record(&code);

    let location = HeaderValue::from_str(&long_url).map_err(|error| {
        tracing::error!(%code, %error, "stored long URL is not a valid header value");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("stored URL of code {code:?} is not a valid Location header"),
        }
    })?;
    let mut response = state.redirect.status().into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

async fn stats(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    if base62::decode(&code).is_none() {
        return Err(not_found(&code));
    }
    let Some(long_url) = state.store.resolve(&code).await? else {
        return Err(not_found(&code));
    };
    let stored = state.store.stored_clicks(&code).await?;
    let pending = state.clicks.pending(&code);
    let body = json!({
        "code": code,
        "longUrl": long_url,
        "clicks": stored + pending,
        "unflushedClicks": pending,
    });
    Ok(Json(body).into_response())
}

async fn form_page() -> Html<&'static str> {
    Html(
        "<!doctype html>\n<title>ringkv shortener</title>\n\
         <h1>Shorten a URL</h1>\n\
         <form method=\"post\" action=\"/api/v1/data/shorten\">\n\
         <input name=\"longUrl\" type=\"url\" size=\"60\" placeholder=\"https://example.com/\" required>\n\
         <button type=\"submit\">Shorten</button>\n</form>\n",
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_accepts_http_and_https() {
        assert_eq!(
            normalize_url("HTTP://Example.COM").unwrap(),
            "http://example.com/"
        );
        assert_eq!(
            normalize_url(" https://example.com/a?b=c ").unwrap(),
            "https://example.com/a?b=c"
        );
    }

    #[test]
    fn normalize_rejects_invalid() {
        for input in [
            "",
            "not a url",
            "example.com/path",
            "ftp://example.com/",
            "javascript:alert(1)",
            "mailto:someone@example.com",
            "http://",
        ] {
            let error = normalize_url(input).unwrap_err();
            assert!(error.contains("longUrl"), "input {input:?} gave {error:?}");
        }
    }

    #[test]
    fn normalize_rejects_long_url() {
        let input = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(normalize_url(&input).unwrap_err().contains("maximum"));
    }
}
