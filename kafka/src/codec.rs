//! Kafka request frames in, response frames out (sans-IO).
//!
//! A frame is a big-endian i32 size and that many bytes: the request header (api key,
//! version, correlation id, client id, and tagged fields in flexible versions) and the body.
//! [`decode_request`] is the one parser of client bytes (fuzzed in `kafka/fuzz`): it checks
//! the API and version against [`SUPPORTED`], walks the body ([`crate::guard`]) and only then
//! lets `kafka-protocol` decode it.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::guard::{check_body, GuardError};

/// Bytes of the size prefix of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Error code UNSUPPORTED_VERSION (the ApiVersions answer to a version it cannot parse).
pub const UNSUPPORTED_VERSION: i16 = 35;

/// An API this listener serves: the versions it advertises and the versions it decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub api: ApiKey,
    /// Lowest version advertised in ApiVersions.
    pub advertised_min: i16,
    /// Lowest version decoded (the codec's floor).
    pub min: i16,
    pub max: i16,
}

const fn served(api: ApiKey, min: i16, max: i16) -> Served {
    Served {
        api,
        advertised_min: min,
        min,
        max,
    }
}

/// Every API served, with its versions. Produce is advertised from v0 because librdkafka
/// turns compression off when a broker's Produce minimum is above 0; the codec decodes v3+
/// (record batch v2), so a v0–v2 Produce is closed like any undecodable request. Upper
/// bounds stop before topic ids replace topic names (Fetch v13, Metadata v10, DeleteTopics v6).
pub const SUPPORTED: &[Served] = &[
    Served {
        api: ApiKey::Produce,
        advertised_min: 0,
        min: 3,
        max: 9,
    },
    served(ApiKey::Fetch, 4, 12),
    served(ApiKey::ListOffsets, 1, 6),
    served(ApiKey::Metadata, 0, 9),
    served(ApiKey::ApiVersions, 0, 3),
    served(ApiKey::CreateTopics, 2, 5),
    served(ApiKey::DeleteTopics, 1, 5),
];

/// The served entry of `api`, if any.
pub fn served_api(api: ApiKey) -> Option<&'static Served> {
    SUPPORTED.iter().find(|s| s.api == api)
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub body: RequestKind,
}

/// What a frame that is not a servable request becomes.
#[derive(Debug, thiserror::Error)]
pub enum RequestDecodeError {
    #[error("request of {0} bytes is shorter than a request header")]
    Short(usize),
    #[error("API key {key} is unknown")]
    UnknownApi { key: i16, correlation_id: i32 },
    /// An ApiVersions request of a version we cannot parse: answered with
    /// UNSUPPORTED_VERSION and our versions, in a v0 response (KIP-511).
    #[error("ApiVersions v{version} is not supported (0..=3)")]
    ApiVersionsVersion { version: i16, correlation_id: i32 },
    #[error("{api:?} v{version} is not served (the connection is closed, as Kafka does)")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed request header: {0}")]
    Header(String),
    #[error("malformed {api:?} v{version} request: {reason}")]
    Body {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("malformed {api:?} v{version} request: {source}")]
    Walk {
        api: ApiKey,
        version: i16,
        source: GuardError,
    },
}

/// Decodes one request frame (without its size prefix).
pub fn decode_request(frame: Bytes) -> Result<Request, RequestDecodeError> {
    if frame.len() < 8 {
        return Err(RequestDecodeError::Short(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| RequestDecodeError::UnknownApi {
        key,
        correlation_id,
    })?;
    let Some(s) = served_api(api).filter(|s| (s.min..=s.max).contains(&version)) else {
        return Err(if api == ApiKey::ApiVersions {
            RequestDecodeError::ApiVersionsVersion {
                version,
                correlation_id,
            }
        } else {
            RequestDecodeError::UnsupportedVersion {
                api,
                version,
                correlation_id,
            }
        });
    };
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| RequestDecodeError::Header(e.to_string()))?;
    check_body(s.api, version, buf.chunk()).map_err(|source| RequestDecodeError::Walk {
        api,
        version,
        source,
    })?;
    let body =
        RequestKind::decode(api, &mut buf, version).map_err(|e| RequestDecodeError::Body {
            api,
            version,
            reason: e.to_string(),
        })?;
    Ok(Request {
        api,
        version,
        correlation_id,
        client_id: header.client_id.map(|c| c.as_str().to_owned()),
        body,
    })
}

/// Encodes a response frame (size prefix, header, body) for a request of `api` `version`.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(&[0; FRAME_PREFIX_BYTES]);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut out, api.response_header_version(version))?;
    body.encode(&mut out, version)?;
    let size = i32::try_from(out.len() - FRAME_PREFIX_BYTES)?;
    out[..FRAME_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}

/// The ApiVersions body: every served API with its advertised versions.
pub fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.api as i16)
                .with_min_version(s.advertised_min)
                .with_max_version(s.max)
        })
        .collect();
    r
}

/// The answer to an ApiVersions request of a version we cannot parse: a v0 response with
/// UNSUPPORTED_VERSION and our versions, so the client retries with one we serve.
pub fn api_versions_unsupported(correlation_id: i32) -> anyhow::Result<Bytes> {
    let body = ResponseKind::ApiVersions(api_versions_body(UNSUPPORTED_VERSION));
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};

    fn frame(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut b = BytesMut::new();
        let mut h = RequestHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = 77;
        h.encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    #[test]
    fn every_served_version_round_trips() {
        for v in 0..=3 {
            let r = decode_request(frame(
                ApiKey::ApiVersions,
                v,
                &ApiVersionsRequest::default(),
            ))
            .unwrap();
            assert_eq!(
                (r.api, r.version, r.correlation_id),
                (ApiKey::ApiVersions, v, 77)
            );
        }
        for v in 0..=9 {
            let r =
                decode_request(frame(ApiKey::Metadata, v, &MetadataRequest::default())).unwrap();
            assert_eq!(r.version, v);
        }
    }

    /// A request of `api` with every array holding an element (nested ones too).
    fn populated(api: ApiKey, b: &mut BytesMut, v: i16) {
        use kafka_protocol::messages::*;
        let name = || TopicName(kafka_protocol::protocol::StrBytes::from_static_str("t"));
        match api {
            ApiKey::Produce => {
                let mut p = produce_request::PartitionProduceData::default();
                p.records = Some(Bytes::from_static(b"abc"));
                let mut t = produce_request::TopicProduceData::default();
                t.name = name();
                t.partition_data = vec![p.clone(), p];
                let mut r = ProduceRequest::default();
                r.topic_data = vec![t];
                r.encode(b, v).unwrap()
            }
            ApiKey::Fetch => {
                let mut t = fetch_request::FetchTopic::default();
                t.topic = name();
                t.partitions = vec![fetch_request::FetchPartition::default(); 2];
                let mut f = fetch_request::ForgottenTopic::default();
                f.topic = name();
                f.partitions = vec![1, 2];
                let mut r = FetchRequest::default();
                r.topics = vec![t];
                if v >= 7 {
                    r.forgotten_topics_data = vec![f];
                }
                r.encode(b, v).unwrap()
            }
            ApiKey::ListOffsets => {
                let mut t = list_offsets_request::ListOffsetsTopic::default();
                t.name = name();
                t.partitions = vec![list_offsets_request::ListOffsetsPartition::default(); 2];
                let mut r = ListOffsetsRequest::default();
                r.topics = vec![t];
                r.encode(b, v).unwrap()
            }
            ApiKey::Metadata => {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(name());
                let mut r = MetadataRequest::default();
                r.topics = Some(vec![t.clone(), t]);
                r.encode(b, v).unwrap()
            }
            ApiKey::CreateTopics => {
                let mut a = create_topics_request::CreatableReplicaAssignment::default();
                a.broker_ids = vec![BrokerId(1), BrokerId(2)];
                let mut c = create_topics_request::CreatableTopicConfig::default();
                c.name = kafka_protocol::protocol::StrBytes::from_static_str("k");
                let mut t = create_topics_request::CreatableTopic::default();
                t.name = name();
                t.assignments = vec![a];
                t.configs = vec![c];
                let mut r = CreateTopicsRequest::default();
                r.topics = vec![t];
                r.encode(b, v).unwrap()
            }
            ApiKey::DeleteTopics => {
                let mut r = DeleteTopicsRequest::default();
                r.topic_names = vec![name(), name()];
                r.encode(b, v).unwrap()
            }
            _ => ApiVersionsRequest::default().encode(b, v).unwrap(),
        }
    }

    #[test]
    fn the_walk_accepts_every_served_version_of_every_api_as_the_codec_encodes_it() {
        for s in SUPPORTED {
            for v in s.min..=s.max {
                let mut b = BytesMut::new();
                let mut h = RequestHeader::default();
                h.request_api_key = s.api as i16;
                h.request_api_version = v;
                h.encode(&mut b, s.api.request_header_version(v)).unwrap();
                populated(s.api, &mut b, v);
                let r = decode_request(b.freeze());
                assert!(r.is_ok(), "{:?} v{v}: {:?}", s.api, r.err());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_request(Bytes::from(bytes));
        }
    }

    #[test]
    fn unknown_and_unserved_versions_are_named() {
        let f = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let mut b = BytesMut::from(&f[..]);
        b[2..4].copy_from_slice(&9i16.to_be_bytes());
        assert!(matches!(
            decode_request(b.freeze()),
            Err(RequestDecodeError::ApiVersionsVersion {
                version: 9,
                correlation_id: 77
            })
        ));
        let mut b = BytesMut::from(&f[..]);
        b[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert!(matches!(
            decode_request(b.freeze()),
            Err(RequestDecodeError::UnknownApi { key: 999, .. })
        ));
        let mut b = BytesMut::from(&f[..]);
        b[0..2].copy_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
        b[2..4].copy_from_slice(&2i16.to_be_bytes());
        assert!(matches!(
            decode_request(b.freeze()),
            Err(RequestDecodeError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 18])),
            Err(RequestDecodeError::Short(2))
        ));
    }

    #[test]
    fn the_unsupported_version_answer_is_a_v0_api_versions_response() {
        let f = api_versions_unsupported(5).unwrap();
        let mut b = f.slice(FRAME_PREFIX_BYTES..);
        assert_eq!(b.get_i32(), 5);
        let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
        assert_eq!(r.error_code, UNSUPPORTED_VERSION);
        assert!(r
            .api_keys
            .iter()
            .any(|k| k.api_key == 0 && k.min_version == 0));
    }
}
