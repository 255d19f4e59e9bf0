//! The built-in page at `/` of the API address: its HTML, script, style sheet, icon and the
//! vendored uPlot, all embedded in the binary, and the headers they are served with.
//!
//! Nothing is built at run time and nothing is fetched from elsewhere. Asset URLs in the HTML
//! carry a hash of their content (`?v=`), so the assets can be cached for good while a new
//! binary's page still loads its own; the HTML itself is revalidated every time. The
//! Content-Security-Policy allows only this origin's script, style, images and fetches: the
//! page shows attacker-controlled strings from findings, and even if one ever reached the DOM
//! as markup, no script in it could run.

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::OnceLock;

/// Only this origin, and no inline script or style: uPlot styles its elements through the
/// CSSOM, which the policy does not restrict.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("index.html");

/// A file the page loads from `/assets/{name}`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("favicon.svg"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("vendor/uplot/uPlot.min.css"),
    },
    Asset {
        // Served so that the licence travels with the code, as MIT asks.
        name: "uPlot.LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("vendor/uplot/LICENSE"),
    },
];

/// A short content hash: the cache key of an asset and its ETag.
fn content_hash(body: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body))
}

fn asset_hashes() -> &'static [String] {
    static HASHES: OnceLock<Vec<String>> = OnceLock::new();
    HASHES.get_or_init(|| ASSETS.iter().map(|a| content_hash(a.body)).collect())
}

/// The HTML with every `/assets/{name}"` reference versioned by the asset's hash.
fn index_html() -> &'static (String, String) {
    static INDEX: OnceLock<(String, String)> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut html = INDEX_HTML.to_owned();
        for (asset, hash) in ASSETS.iter().zip(asset_hashes()) {
            let plain = format!("/assets/{}\"", asset.name);
            let versioned = format!("/assets/{}?v={hash}\"", asset.name);
            html = html.replace(&plain, &versioned);
        }
        let etag = content_hash(html.as_bytes());
        (html, etag)
    })
}

/// Headers every page response carries.
fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// 304 when the client already holds this version, else `body` with its type and ETag.
fn respond(
    request: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    cache: &'static str,
    body: impl IntoResponse,
) -> Response {
    let quoted = format!("\"{etag}\"");
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == quoted || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let headers = response.headers_mut();
    security_headers(headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&quoted) {
        headers.insert(header::ETAG, v);
    }
    response
}

/// `GET /`: the page. Revalidated on every load, so a new binary's page is seen at once.
pub async fn index(request: HeaderMap) -> Response {
    let (html, etag) = index_html();
    respond(
        &request,
        etag,
        "text/html; charset=utf-8",
        "no-cache",
        html.as_str(),
    )
}

#[derive(Deserialize)]
pub struct AssetParams {
    v: Option<String>,
}

/// `GET /assets/{name}`: an embedded file. Cached for good when asked for by the version the
/// page names; any other request (an old version, none) is revalidated instead, so a stale
/// page never pins a wrong file.
pub async fn asset(
    Path(name): Path<String>,
    Query(params): Query<AssetParams>,
    request: HeaderMap,
) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let mut r = (StatusCode::NOT_FOUND, "no such asset\n").into_response();
        security_headers(r.headers_mut());
        return r;
    };
    let asset = &ASSETS[i];
    let hash = &asset_hashes()[i];
    let cache = if params.v.as_deref() == Some(hash.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    respond(&request, hash, asset.content_type, cache, asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_html_names_is_embedded_and_versioned() {
        let (html, _) = index_html();
        assert!(html.matches("/assets/").count() >= 5, "{html}");
        for piece in html.split("/assets/").skip(1) {
            let reference = piece.split('"').next().unwrap();
            let (name, version) = reference
                .split_once("?v=")
                .unwrap_or_else(|| panic!("{reference} is not versioned"));
            let i = ASSETS
                .iter()
                .position(|a| a.name == name)
                .unwrap_or_else(|| panic!("{name} is not embedded"));
            assert_eq!(version, asset_hashes()[i]);
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // The policy would block them; this says so before a browser does.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style="));
        for (at, _) in INDEX_HTML.match_indices(" on") {
            let attr: String = INDEX_HTML[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            let after = INDEX_HTML[at + 1 + attr.len()..].chars().next();
            assert_ne!(after, Some('='), "inline event handler {attr}");
        }
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    }

    #[test]
    fn the_script_never_writes_markup() {
        // Findings carry attacker-controlled strings: the page only ever sets text.
        let js = std::str::from_utf8(ASSETS[0].body).unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "app.js uses {sink}");
        }
    }
}
