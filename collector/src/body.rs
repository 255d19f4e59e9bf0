//! HTTP request bodies: which format and compression a request declares, reading the body
//! under the size limit, and decompressing under the same limit.
//!
//! The limit is enforced while bytes arrive and while they inflate, never after: a body
//! that is too large, or a small gzip bomb, is stopped at `limit + 1` bytes, so memory use
//! per request stays bounded by the limit whatever the client sends.

use crate::error::IngestError;
use crate::receivers::Held;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::BodyExt;
use std::io::Read;

/// The two OTLP/HTTP payload formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Protobuf,
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// The media type of the request, without parameters (`; charset=utf-8`), lowercased.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The format an OTLP request declares; anything else is a 415.
pub(crate) fn otlp_format(headers: &HeaderMap) -> Result<Format, IngestError> {
    match media_type(headers).as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        other => Err(IngestError::UnsupportedContentType(other.to_string())),
    }
}

/// The audit webhook takes JSON only.
pub(crate) fn json_only(headers: &HeaderMap) -> Result<(), IngestError> {
    match media_type(headers).as_str() {
        "application/json" => Ok(()),
        other => Err(IngestError::UnsupportedContentType(other.to_string())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// The `Content-Encoding` of the request. Stacked encodings (`gzip, zstd`) are refused:
/// no OTLP exporter sends them.
pub(crate) fn encoding(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(IngestError::UnsupportedEncoding(
            value.to_str().unwrap_or("<not ascii>").to_string(),
        )),
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes (at once when the
/// declared `Content-Length` already does).
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    held: &mut Held,
    timeout: std::time::Duration,
) -> Result<Bytes, IngestError> {
    tokio::time::timeout(timeout, read_held(headers, body, limit, held))
        .await
        .map_err(|_| IngestError::BodyTimeout(timeout))?
}

/// [`read_limited`] without its deadline: every byte held is covered by `held` first.
async fn read_held(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    held: &mut Held,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    // A body that arrives in one frame is kept as it is; the first copy is made only when a
    // second frame comes (then trusting the declared length for the allocation, up to the
    // limit).
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IngestError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if so_far + data.len() > limit {
            return Err(IngestError::TooLarge { limit });
        }
        if first.is_none() && buf.is_empty() {
            held.cover(data.len()).await?;
            first = Some(data);
            continue;
        }
        if let Some(first) = first.take() {
            let room = (declared.unwrap_or(0) as usize).max(first.len() + data.len());
            held.cover(first.len() + room).await?;
            buf.reserve(room);
            buf.extend_from_slice(&first);
        }
        held.cover(buf.len() + data.len()).await?;
        buf.extend_from_slice(&data);
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The decompressed body, at most `limit` bytes; inflating stops at the first byte past it.
pub(crate) fn decompress(
    encoding: Encoding,
    data: Bytes,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let fail = |e: std::io::Error| IngestError::BadCompression {
        encoding: encoding.name(),
        message: e.to_string(),
    };
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(data),
        // Multi-member: concatenated gzip streams are one valid body.
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&data[..])),
        Encoding::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(&data[..]).map_err(fail)?)
        }
    };
    // A guess at the inflated size for the first allocation, bounded by the limit.
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(fail)?;
    if out.len() > limit {
        return Err(IngestError::TooLargeDecompressed { limit });
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoded::RejectReason;
    use std::io::Write;
    use std::time::Duration;

    /// [`read_limited`] with room to spare and time enough.
    async fn read(h: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
        let mut held = Held::with_budget(1 << 20, Duration::from_millis(10));
        read_limited(h, body, limit, &mut held, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_body_is_held_against_the_budget_and_the_clock() {
        let h = HeaderMap::new();
        let mut held = Held::with_budget(8, Duration::from_millis(10));
        let err = read_limited(
            &h,
            Body::from(vec![1u8; 9]),
            100,
            &mut held,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason(), RejectReason::Backpressure);
        assert!(err.to_string().contains("receive buffer is full"), "{err}");
        // A body that never ends runs out of time, not of memory.
        let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let mut held = Held::with_budget(100, Duration::from_millis(10));
        let err = read_limited(&h, body, 100, &mut held, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::BodyTimeout(_)), "{err}");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn formats_by_media_type() {
        let f = |ct: &str| otlp_format(&headers(&[("content-type", ct)]));
        assert_eq!(f("application/x-protobuf").unwrap(), Format::Protobuf);
        assert_eq!(f("Application/JSON; charset=utf-8").unwrap(), Format::Json);
        let err = f("text/plain").unwrap_err();
        assert_eq!(err.reason(), RejectReason::UnsupportedContentType);
        assert!(otlp_format(&HeaderMap::new()).is_err());
        assert!(json_only(&headers(&[("content-type", "application/x-protobuf")])).is_err());
    }

    #[test]
    fn encodings_by_header() {
        let e = |v: &str| encoding(&headers(&[("content-encoding", v)]));
        assert_eq!(encoding(&HeaderMap::new()).unwrap(), Encoding::Identity);
        assert_eq!(e("GZIP").unwrap(), Encoding::Gzip);
        assert_eq!(e("zstd").unwrap(), Encoding::Zstd);
        assert_eq!(e("identity").unwrap(), Encoding::Identity);
        for bad in ["br", "deflate", "gzip, zstd"] {
            assert_eq!(
                e(bad).unwrap_err().reason(),
                RejectReason::BadEncoding,
                "{bad}"
            );
        }
    }

    #[test]
    fn round_trips_within_the_limit() {
        let data = b"hello hello hello hello".repeat(10);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(decompress(Encoding::Zstd, z.into(), 1000).unwrap(), data);
        let g = gzip(&data);
        assert_eq!(
            decompress(Encoding::Gzip, g.into(), data.len()).unwrap(),
            data
        );
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeroes compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "{}", bomb.len());
        let limit = 1024 * 1024;
        let err = decompress(Encoding::Gzip, bomb.into(), limit).unwrap_err();
        assert!(
            matches!(err, IngestError::TooLargeDecompressed { .. }),
            "{err}"
        );
        assert_eq!(err.reason(), RejectReason::TooLarge);
    }

    #[test]
    fn zstd_bomb_stops_at_the_limit() {
        let bomb = zstd::encode_all(&vec![0u8; 64 * 1024 * 1024][..], 3).unwrap();
        let err = decompress(Encoding::Zstd, bomb.into(), 1024).unwrap_err();
        assert_eq!(err.reason(), RejectReason::TooLarge);
    }

    #[test]
    fn corrupt_compression_is_bad_encoding() {
        for enc in [Encoding::Gzip, Encoding::Zstd] {
            let err = decompress(enc, Bytes::from_static(b"not compressed"), 100).unwrap_err();
            assert_eq!(err.reason(), RejectReason::BadEncoding, "{enc:?}");
        }
        // A truncated gzip stream is an error too, not a short body.
        let mut g = gzip(b"some data that compresses");
        g.truncate(g.len() - 6);
        assert!(decompress(Encoding::Gzip, g.into(), 100).is_err());
    }

    #[tokio::test]
    async fn reading_stops_past_the_limit() {
        let body = Body::from(vec![1u8; 101]);
        let err = read(&HeaderMap::new(), body, 100).await.unwrap_err();
        assert!(matches!(err, IngestError::TooLarge { limit: 100 }), "{err}");
        let ok = read(&HeaderMap::new(), Body::from(vec![1u8; 100]), 100)
            .await
            .unwrap();
        assert_eq!(ok.len(), 100);
        // A declared length over the limit is refused before reading.
        let h = headers(&[("content-length", "1000")]);
        let err = read(&h, Body::empty(), 100).await.unwrap_err();
        assert_eq!(err.reason(), RejectReason::TooLarge);
    }

    #[tokio::test]
    async fn a_body_in_several_frames_is_joined_and_one_frame_kept_as_is() {
        let frames = |parts: &[&'static [u8]]| {
            let parts: Vec<Result<Bytes, std::io::Error>> =
                parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
            Body::from_stream(futures::stream::iter(parts))
        };
        let h = HeaderMap::new();
        let joined = read(&h, frames(&[b"ab", b"", b"cde", b"f"]), 100)
            .await
            .unwrap();
        assert_eq!(&joined[..], b"abcdef");
        let one: &'static [u8] = b"whole";
        let kept = read(&h, frames(&[one]), 100).await.unwrap();
        assert_eq!(kept.as_ptr(), one.as_ptr(), "not copied");
        // The limit counts every frame, the first one held aside included.
        let err = read(&h, frames(&[b"0123456789", b"0"]), 10)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), RejectReason::TooLarge);
    }
}
