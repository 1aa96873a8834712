//! A Fetch response whose record sets are not in memory. The broker serves stored batches straight
//! from the segment files (`sendfile`), so the response is encoded as framing — everything but the
//! record sets — with the positions where each partition's records belong. The socket writer sends
//! the framing up to a position, then that partition's file ranges, then the rest.
//!
//! The framing is `kafka-protocol`'s own encoding: each struct is encoded by the crate with an empty
//! array (or a null record set) in its last field, that known trailer is checked and cut, and the
//! real count or length is written in its place (an INT32, or an unsigned varint in flexible
//! versions: the crate's primitive encoders are private). The tests check the result
//! byte for byte against the crate's encoding of the same response with the records inline, for
//! every version we serve.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use crate::{EncodeError, FRAME_LENGTH_BYTES, RESPONSE_BYTES_MAX};

/// First Fetch version whose messages are "flexible" (compact arrays and bytes, tagged fields).
const FIRST_FLEXIBLE_VERSION: i16 = 12;

/// Appends one length-prefixed Fetch response frame to `out`, without the record sets of the
/// partitions whose `records` is `None`: their lengths are `spliced` (in response order), and the
/// returned positions (indexes into `out`, one per spliced partition, in order) are where their bytes
/// go. Partitions with `Some` records are encoded inline. Tagged fields (KIP-951 leader hints,
/// diverging epochs, unknown tags) are not supported on spliced partitions and are refused.
pub fn encode_fetch_framing(
    version: i16,
    correlation_id: i32,
    response: &FetchResponse,
    spliced: &[usize],
    out: &mut BytesMut,
) -> Result<Vec<usize>, EncodeError> {
    let error = |reason: String| EncodeError::Encode { api_key: ApiKey::Fetch, version, reason };
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    let start = out.len();
    out.put_u32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(out, ApiKey::Fetch.response_header_version(version)).map_err(|e| error(e.to_string()))?;

    let top = FetchResponse::default()
        .with_throttle_time_ms(response.throttle_time_ms)
        .with_error_code(response.error_code)
        .with_session_id(response.session_id)
        .with_node_endpoints(response.node_endpoints.clone());
    if !response.node_endpoints.is_empty() || !response.unknown_tagged_fields.is_empty() {
        return Err(error("tagged fields on a spliced Fetch response".to_string()));
    }
    encode_without_empty_array(&top, version, out).map_err(error)?;
    encode_length(response.responses.len(), flexible, out).map_err(error)?;

    let mut lengths = spliced.iter();
    let mut positions = Vec::with_capacity(spliced.len());
    let mut records_bytes = 0usize;
    for topic in &response.responses {
        let frame = FetchableTopicResponse::default().with_topic(topic.topic.clone()).with_topic_id(topic.topic_id);
        if !topic.unknown_tagged_fields.is_empty() {
            return Err(error("tagged fields on a spliced Fetch topic".to_string()));
        }
        encode_without_empty_array(&frame, version, out).map_err(error)?;
        encode_length(topic.partitions.len(), flexible, out).map_err(error)?;
        for partition in &topic.partitions {
            if partition.records.is_some() {
                partition.encode(out, version).map_err(|e| error(e.to_string()))?;
                continue;
            }
            let Some(&length) = lengths.next() else {
                return Err(error("fewer spliced lengths than partitions without records".to_string()));
            };
            encode_partition_framing(partition, version, length, out).map_err(error)?;
            positions.push(out.len());
            records_bytes = records_bytes.saturating_add(length);
            if flexible {
                // The partition's (empty) tagged fields follow its records.
                put_unsigned_varint(out, 0);
            }
        }
        if flexible {
            put_unsigned_varint(out, 0);
        }
    }
    if lengths.next().is_some() {
        return Err(error("more spliced lengths than partitions without records".to_string()));
    }
    if flexible {
        put_unsigned_varint(out, 0);
    }
    let size = (out.len() - start - FRAME_LENGTH_BYTES).saturating_add(records_bytes);
    if size > RESPONSE_BYTES_MAX {
        out.truncate(start);
        return Err(EncodeError::TooLarge { api_key: ApiKey::Fetch, size });
    }
    out[start..start + FRAME_LENGTH_BYTES].copy_from_slice(&(size as u32).to_be_bytes());
    Ok(positions)
}

/// Encodes `message`, whose last field is an empty array followed (in flexible versions) by no
/// tagged fields, without that trailer.
fn encode_without_empty_array<M: Encodable>(message: &M, version: i16, out: &mut BytesMut) -> Result<(), String> {
    let trailer: &[u8] = if version >= FIRST_FLEXIBLE_VERSION { &[1, 0] } else { &[0, 0, 0, 0] };
    encode_and_cut(message, version, trailer, out)
}

/// A partition's framing up to its records, then the records' length.
fn encode_partition_framing(partition: &PartitionData, version: i16, length: usize, out: &mut BytesMut) -> Result<(), String> {
    let flexible = version >= FIRST_FLEXIBLE_VERSION;
    // A null record set: -1 as an INT32, or 0 as a compact length followed by no tagged fields.
    let trailer: &[u8] = if flexible { &[0, 0] } else { &[0xff, 0xff, 0xff, 0xff] };
    encode_and_cut(partition, version, trailer, out)?;
    encode_length(length, flexible, out)
}

fn encode_and_cut<M: Encodable>(message: &M, version: i16, trailer: &[u8], out: &mut BytesMut) -> Result<(), String> {
    let before = out.len();
    message.encode(out, version).map_err(|e| e.to_string())?;
    if out.len() < before + trailer.len() || !out.ends_with(trailer) {
        out.truncate(before);
        return Err("unexpected trailer (tagged fields set on a spliced Fetch response?)".to_string());
    }
    out.truncate(out.len() - trailer.len());
    Ok(())
}

/// An array's element count or a byte string's length: an INT32, or in flexible versions an
/// UNSIGNED_VARINT of the value plus one (compact arrays and bytes reserve 0 for null).
fn encode_length(length: usize, flexible: bool, out: &mut BytesMut) -> Result<(), String> {
    if flexible {
        let length = u32::try_from(length).ok().and_then(|l| l.checked_add(1)).ok_or("length out of range")?;
        put_unsigned_varint(out, length);
    } else {
        out.put_i32(i32::try_from(length).map_err(|_| "length out of range")?);
    }
    Ok(())
}

/// Kafka's UNSIGNED_VARINT: 7 bits per byte, low groups first, high bit set on all but the last.
fn put_unsigned_varint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::AbortedTransaction;
    use kafka_protocol::messages::{ProducerId, ResponseKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::{SUPPORTED_APIS, encode_response};

    /// A response with what a Fetch carries: several topics, partitions with and without records,
    /// errors (inline empty records), aborted transactions, a throttle time.
    fn sample(records: &[Bytes]) -> FetchResponse {
        let mut records = records.iter().cloned();
        let partition = |index: i32, records: Option<Bytes>, aborted: bool| {
            PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(1000 + i64::from(index))
                .with_last_stable_offset(900)
                .with_log_start_offset(7)
                .with_aborted_transactions(
                    aborted.then(|| vec![AbortedTransaction::default().with_producer_id(ProducerId(42)).with_first_offset(17)]),
                )
                .with_records(records)
        };
        let topic = |name: &'static str, partitions: Vec<PartitionData>| {
            FetchableTopicResponse::default().with_topic(TopicName(StrBytes::from_static_str(name))).with_partitions(partitions)
        };
        FetchResponse::default().with_throttle_time_ms(3).with_responses(vec![
            topic("orders", vec![partition(0, records.next(), true), partition(1, Some(Bytes::new()), false).with_error_code(6)]),
            topic("empty", vec![]),
            topic("payments", vec![partition(2, records.next(), false), partition(5, records.next(), true)]),
        ])
    }

    #[test]
    fn spliced_framing_is_the_crate_encoding_with_the_records_inline() {
        let (min, max) = SUPPORTED_APIS.iter().find(|(key, _, _)| *key == ApiKey::Fetch).map(|&(_, min, max)| (min, max)).unwrap();
        let records = [Bytes::from(vec![1u8; 300]), Bytes::new(), Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<_>>())];
        for version in min..=max {
            let mut expected = BytesMut::new();
            encode_response(ApiKey::Fetch, version, 99, &ResponseKind::Fetch(sample(&records)), &mut expected).unwrap();

            let mut framing = BytesMut::from(&b"earlier reply"[..]);
            let without: FetchResponse = {
                let mut r = sample(&records);
                for topic in &mut r.responses {
                    for partition in &mut topic.partitions {
                        if partition.error_code == 0 {
                            partition.records = None;
                        }
                    }
                }
                r
            };
            let lengths: Vec<usize> = records.iter().map(Bytes::len).collect();
            let positions = encode_fetch_framing(version, 99, &without, &lengths, &mut framing).unwrap();
            assert_eq!(positions.len(), records.len());
            let mut assembled = Vec::new();
            let mut cursor = b"earlier reply".len();
            for (position, records) in positions.iter().zip(&records) {
                assembled.extend_from_slice(&framing[cursor..*position]);
                assembled.extend_from_slice(records);
                cursor = *position;
            }
            assembled.extend_from_slice(&framing[cursor..]);
            assert_eq!(&assembled[..], &expected[..], "Fetch v{version}");
        }
    }

    #[test]
    fn mismatched_lengths_and_tagged_fields_are_errors_not_bad_frames() {
        let mut response = sample(&[]);
        let mut out = BytesMut::new();
        assert!(encode_fetch_framing(12, 1, &response, &[], &mut out).is_err());
        assert!(encode_fetch_framing(12, 1, &response, &[1, 2], &mut out).is_err());
        response.responses[0].partitions[0].current_leader.leader_id = kafka_protocol::messages::BrokerId(3);
        response.responses[0].partitions[0].current_leader.leader_epoch = 2;
        assert!(encode_fetch_framing(12, 1, &response, &[10, 10, 10], &mut out).is_err());
        assert!(encode_fetch_framing(11, 1, &response, &[10, 10, 10], &mut out).is_ok(), "tagged fields do not exist before v12");
    }

    #[test]
    fn the_frame_length_counts_the_spliced_bytes() {
        let mut response = sample(&[]);
        response.responses[0].partitions[0].records = None;
        response.responses[2].partitions[0].records = Some(Bytes::new());
        response.responses[2].partitions[1].records = Some(Bytes::new());
        let mut out = BytesMut::new();
        encode_fetch_framing(11, 1, &response, &[1 << 20], &mut out).unwrap();
        let size = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(size, out.len() - 4 + (1 << 20));
    }
}
