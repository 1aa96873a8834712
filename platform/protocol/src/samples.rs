//! Sample request frames for tests and fuzzing seeds: one default-valued request of every API in
//! [`SUPPORTED_APIS`](crate::SUPPORTED_APIS), encoded by the same codec clients use. Not on any data
//! path.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::{FRAME_LENGTH_BYTES, encode_request};

/// The frame (without its length prefix) of a default-valued `api_key` request at `version`, with
/// `correlation_id` and client id "sample"; `None` for an API the broker does not implement.
pub fn default_request(api_key: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes> {
    macro_rules! samples {
        ($($key:ident => $request:ty),* $(,)?) => {
            match api_key {
                $(ApiKey::$key => frame(api_key, version, correlation_id, &<$request>::default()),)*
                _ => None,
            }
        };
    }
    samples!(
        Produce => ProduceRequest,
        Fetch => FetchRequest,
        ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest,
        OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest,
        FindCoordinator => FindCoordinatorRequest,
        JoinGroup => JoinGroupRequest,
        Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest,
        SyncGroup => SyncGroupRequest,
        DescribeGroups => DescribeGroupsRequest,
        ListGroups => ListGroupsRequest,
        ApiVersions => ApiVersionsRequest,
        CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest,
        DeleteRecords => DeleteRecordsRequest,
        InitProducerId => InitProducerIdRequest,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
        DescribeConfigs => DescribeConfigsRequest,
        AlterConfigs => AlterConfigsRequest,
        CreatePartitions => CreatePartitionsRequest,
        AddPartitionsToTxn => AddPartitionsToTxnRequest,
        AddOffsetsToTxn => AddOffsetsToTxnRequest,
        EndTxn => EndTxnRequest,
        WriteTxnMarkers => WriteTxnMarkersRequest,
        TxnOffsetCommit => TxnOffsetCommitRequest,
        DeleteGroups => DeleteGroupsRequest,
        ElectLeaders => ElectLeadersRequest,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        AlterPartitionReassignments => AlterPartitionReassignmentsRequest,
        ListPartitionReassignments => ListPartitionReassignmentsRequest,
        OffsetDelete => OffsetDeleteRequest,
        DescribeCluster => DescribeClusterRequest,
        DescribeTransactions => DescribeTransactionsRequest,
        ListTransactions => ListTransactionsRequest,
    )
}

/// Encodes `body` as a request frame without its length prefix; `None` if the codec cannot encode it
/// at `version`.
pub fn frame<R: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Option<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sample")));
    let mut out = BytesMut::new();
    encode_request(&header, api_key, body, &mut out).ok()?;
    Some(out.freeze().slice(FRAME_LENGTH_BYTES..))
}
